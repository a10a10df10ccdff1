package config

import (
	"fmt"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// RedisOptions parses RedisURL for go-redis.
func (c Config) RedisOptions() (*redis.Options, error) {
	opt, err := redis.ParseURL(c.RedisURL)
	if err != nil {
		return nil, &Error{Setting: "REDIS_URL", Reason: scrubUserinfo(err.Error())}
	}
	return opt, nil
}

// Redis is a resolved REDIS_URL or QUEUE_REDIS_URL: one server, or a
// Sentinel-managed primary when the URL names a master (?master_name=...).
type Redis struct {
	Single   *redis.Options
	Failover *redis.FailoverOptions
}

// Redis resolves REDIS_URL. A URL with master_name is a Sentinel URL:
// redis://[user:password@]sentinel:26379/db?master_name=M&addr=sentinel2:26379,
// where user and password are the Sentinels' and the primary's password
// comes from the password query parameter.
func (c Config) Redis() (Redis, error) { return parseRedis("REDIS_URL", c.RedisURL) }

// SeparateQueue reports whether the job system's keys live on a Redis of
// their own (QUEUE_REDIS_URL set to another URL than REDIS_URL).
func (c Config) SeparateQueue() bool {
	return c.QueueRedisURL != "" && c.QueueRedisURL != c.RedisURL
}

// QueueRedis resolves QUEUE_REDIS_URL, the same URL forms as REDIS_URL.
// Without SeparateQueue it is REDIS_URL's: one URL means one client.
func (c Config) QueueRedis() (Redis, error) {
	if !c.SeparateQueue() {
		return c.Redis()
	}
	return parseRedis("QUEUE_REDIS_URL", c.QueueRedisURL)
}

// parseRedis resolves the URL of setting; errors name it and never quote
// credentials.
func parseRedis(setting, raw string) (Redis, error) {
	if strings.Contains(raw, "master_name=") {
		fo, err := redis.ParseFailoverURL(raw)
		if err != nil {
			return Redis{}, &Error{Setting: setting, Reason: scrubUserinfo(err.Error())}
		}
		if fo.MasterName == "" {
			return Redis{}, &Error{Setting: setting, Reason: "master_name is empty"}
		}
		return Redis{Failover: fo}, nil
	}
	opt, err := redis.ParseURL(raw)
	if err != nil {
		return Redis{}, &Error{Setting: setting, Reason: scrubUserinfo(err.Error())}
	}
	return Redis{Single: opt}, nil
}

// NewClient returns a go-redis client; with Sentinel it follows the
// current primary across failovers. Its calls return by their context's
// deadline (docs/deadlines.md), not only at go-redis' read timeout.
func (r Redis) NewClient() *redis.Client {
	if r.Failover != nil {
		r.Failover.ContextTimeoutEnabled = true
		return redis.NewFailoverClient(r.Failover)
	}
	r.Single.ContextTimeoutEnabled = true
	return redis.NewClient(r.Single)
}

// Asynq returns asynq's connection option for the same Redis (asynqmon
// takes one).
func (r Redis) Asynq() asynq.RedisConnOpt {
	if f := r.Failover; f != nil {
		return asynq.RedisFailoverClientOpt{
			MasterName: f.MasterName, SentinelAddrs: f.SentinelAddrs,
			SentinelUsername: f.SentinelUsername, SentinelPassword: f.SentinelPassword,
			Username: f.Username, Password: f.Password, DB: f.DB, TLSConfig: f.TLSConfig, PoolSize: f.PoolSize,
		}
	}
	return AsynqRedis(r.Single)
}

// String names the server for messages, without credentials.
func (r Redis) String() string {
	if r.Failover != nil {
		return fmt.Sprintf("sentinel master %q via %s", r.Failover.MasterName, strings.Join(r.Failover.SentinelAddrs, ","))
	}
	return r.Single.Addr
}

// FailFast shortens timeouts and retries, for a CLI that should report an
// unreachable Redis at once.
func (r Redis) FailFast() {
	if r.Failover != nil {
		r.Failover.MaxRetries, r.Failover.DialTimeout = 1, 3*time.Second
		return
	}
	r.Single.MaxRetries, r.Single.DialTimeout = 1, 3*time.Second
}

// AsynqRedis converts go-redis options into asynq's connection option.
func AsynqRedis(o *redis.Options) asynq.RedisClientOpt {
	return asynq.RedisClientOpt{
		Network:   o.Network,
		Addr:      o.Addr,
		Username:  o.Username,
		Password:  o.Password,
		DB:        o.DB,
		TLSConfig: o.TLSConfig,
		PoolSize:  o.PoolSize,
	}
}
