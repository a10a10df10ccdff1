package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/hibiken/asynq"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/jobs"
)

func env(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func TestLoadDefaults(t *testing.T) {
	c, err := Load(env(nil), nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Embedded() || !c.ChatLLMEnabled || c.KAEnabled || !c.KADedupEnabled || !c.SchedulerEnabled {
		t.Errorf("unexpected defaults %+v", c)
	}
	if c.HTTPAddr != "127.0.0.1:8080" || c.ProbeAddr != "127.0.0.1:8081" || c.ShutdownTimeout != 30*time.Second || c.Concurrency != 10 {
		t.Errorf("unexpected worker defaults %+v", c)
	}
	if c.KGDecayFactor != 0.95 || c.KGDecayMinWeight != 0.1 || c.KGBatchSize != 2000 {
		t.Errorf("unexpected knowledge-graph maintenance defaults %+v", c)
	}
	if c.StarwikiLintIntervalMins != 60 || c.StarwikiStaleDays != 180 || c.KAOrgIntervalSeconds != 600 || c.KAExtractionHTTPTimeout != 120*time.Second {
		t.Errorf("unexpected task defaults %+v", c)
	}
}

func TestLoadRejectsInvalidValuesNamingTheSetting(t *testing.T) {
	tests := []struct {
		env, value, want string
	}{
		{"REDIS_URL", "http://localhost:6379", "REDIS_URL"},
		{"REDIS_URL", "redis://s1:26379/0?master_name=", "REDIS_URL"},
		{"REDIS_URL", "redis://s1:26379/0?master_name=m&bogus=1", "REDIS_URL"},
		{"KA_ENABLED", "maybe", "KA_ENABLED"},
		{"STARWIKI_LINT_INTERVAL_MINUTES", "soon", "STARWIKI_LINT_INTERVAL_MINUTES"},
		{"STARWIKI_STALE_DAYS", "0", "STARWIKI_STALE_DAYS"},
		{"KA_ORG_INTERVAL_SECONDS", "0", "KA_ORG_INTERVAL_SECONDS"},
		{"LLM_BASE_URL", "ftp://x", "LLM_BASE_URL"},
		{"SHUTDOWN_TIMEOUT", "-3s", "SHUTDOWN_TIMEOUT"},
		{"TASK_CHECK_INTERVAL", "1ms", "TASK_CHECK_INTERVAL"},
		{"TASK_CHECK_INTERVAL", "2h", "TASK_CHECK_INTERVAL"},
		{"WORKER_CONCURRENCY", "zero", "WORKER_CONCURRENCY"},
		{"HTTP_ADDR", "8080", "HTTP_ADDR"},
		{"PROBE_ADDR", "8081", "PROBE_ADDR"},
		{"PROBE_ADDR", "localhost", "PROBE_ADDR"},
		{"LOG_LEVEL", "loud", "LOG_LEVEL"},
		{"DASHBOARD_PATH", "dash", "DASHBOARD_PATH"},
		{"BACKGROUND_SCHEDULER_CHAT_LLM_ENABLED", "2", "BACKGROUND_SCHEDULER_CHAT_LLM_ENABLED"},
		{"DEPLOYMENT_ID", "v1 with spaces", "DEPLOYMENT_ID"},
		{"EMBEDDINGS_RATE_PER_MINUTE", "-1", "EMBEDDINGS_RATE_PER_MINUTE"},
		{"DISCORD_API_BASE_URL", "discord.com", "DISCORD_API_BASE_URL"},
		{"KG_DECAY_FACTOR", "0", "KG_DECAY_FACTOR"},
		{"KG_DECAY_FACTOR", "1.5", "KG_DECAY_FACTOR"},
		{"KG_DECAY_MIN_WEIGHT", "-1", "KG_DECAY_MIN_WEIGHT"},
		{"KG_BATCH_SIZE", "50000", "KG_BATCH_SIZE"},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			_, err := Load(env(map[string]string{tt.env: tt.value}), nil, io.Discard)
			var ce *Error
			if !errors.As(err, &ce) || ce.Setting != tt.want {
				t.Fatalf("err = %v, want a config error naming %s", err, tt.want)
			}
		})
	}
}

func TestLoadNeverEchoesSecrets(t *testing.T) {
	_, err := Load(env(map[string]string{"REDIS_URL": "http://:hunter2@x"}), nil, io.Discard)
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("err = %v", err)
	}
}

func TestFlagsOverrideEnvironment(t *testing.T) {
	c, err := Load(env(map[string]string{"KA_ENABLED": "false", "REDIS_URL": "redis://a:1"}),
		[]string{"-ka-enabled=true", "-redis-url", "rediss://:pw@b:2/3"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !c.KAEnabled {
		t.Error("flag did not override KA_ENABLED")
	}
	opt, err := c.RedisOptions()
	if err != nil {
		t.Fatal(err)
	}
	if opt.Addr != "b:2" || opt.Password != "pw" || opt.DB != 3 || opt.TLSConfig == nil {
		t.Errorf("redis options %+v", opt)
	}
	_, err = Load(env(nil), []string{"-ka-enabled=perhaps"}, io.Discard)
	var ce *Error
	if !errors.As(err, &ce) || ce.Setting != "-ka-enabled" {
		t.Errorf("err = %v, want one naming -ka-enabled", err)
	}
}

func TestGatingEnvReflectsConfiguration(t *testing.T) {
	c, err := Load(env(map[string]string{
		"FALKORDB_URL": "redis://g:6379", "LLM_BASE_URL": "http://llm/v1", "KA_ENABLED": "1",
		"BACKGROUND_SCHEDULER_CHAT_LLM_ENABLED": "off",
	}), nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	e, err := c.GatingEnv(jobs.Catalog(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !e.Available.Has(jobs.Redis|jobs.KG|jobs.LLM) || e.Available.Has(jobs.Platform) {
		t.Errorf("available = %v", e.Available)
	}
	if e.ChatLLMEnabled || !e.Flags["ka_enabled"] {
		t.Errorf("env = %+v", e)
	}
}

// update rewrites the README's settings table from the code:
// go test ./internal/config -run TestReadmeSettingsTable -update
var update = flag.Bool("update", false, "rewrite the README's settings table from Config's tags")

const (
	tableBegin = "<!-- settings table: generated from internal/config (go test ./internal/config -run TestReadmeSettingsTable -update) -->\n"
	tableEnd   = "<!-- end of settings table -->\n"
)

// settingsTable renders Settings as the README's markdown table.
func settingsTable() string {
	var b strings.Builder
	b.WriteString("| Variable | Flag | Default | Meaning |\n|---|---|---|---|\n")
	for _, s := range Settings() {
		def := "(empty)"
		if s.Default != "" {
			def = "`" + s.Default + "`"
		}
		fmt.Fprintf(&b, "| `%s` | `-%s` | %s | %s |\n", s.Env, s.Flag(), def, strings.ReplaceAll(s.Help, "|", "\\|"))
	}
	return b.String()
}

func TestReadmeSettingsTableIsGeneratedFromTheCode(t *testing.T) {
	const path = "../../README.md"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	i, j := strings.Index(readme, tableBegin), strings.Index(readme, tableEnd)
	if i < 0 || j < i {
		t.Fatalf("README lacks the settings table markers %q ... %q", tableBegin, tableEnd)
	}
	got, want := readme[i+len(tableBegin):j], settingsTable()
	if got == want {
		return
	}
	if *update {
		if err := os.WriteFile(path, []byte(readme[:i+len(tableBegin)]+want+readme[j:]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("README's settings table differs from Config's tags; run go test ./internal/config -run TestReadmeSettingsTable -update\n--- README\n%s\n--- code\n%s", got, want)
}

func TestConfigErrorsNeverEchoURLCredentials(t *testing.T) {
	for _, tt := range []struct{ env, value string }{
		{"REDIS_URL", "redis://:PW-s3cret@host:badport/0"},
		{"REDIS_URL", "redis://user:PW-s3cret@host:6379/notadb"},
		{"REDIS_URL", "redis://sentinel:26379/0?master_name=m&password=PW-s3cret&bogus=1"},
		{"FALKORDB_URL", "redis://:PW-s3cret@host:badport/0"},
		{"FALKORDB_URL", "http://:PW-s3cret@falkordb:6379"},
	} {
		t.Run(tt.value, func(t *testing.T) {
			_, err := Load(env(map[string]string{tt.env: tt.value}), nil, io.Discard)
			var ce *Error
			if !errors.As(err, &ce) || ce.Setting != tt.env {
				t.Fatalf("err = %v, want a config error naming %s", err, tt.env)
			}
			if strings.Contains(err.Error(), "PW-s3cret") || strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("the error shows the password: %v", err)
			}
		})
	}
	_, err := Load(env(nil), []string{"-redis-url", "redis://:PW-s3cret@host:badport/0"}, io.Discard)
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("flag: err = %v", err)
	}
}

func TestRedisURLSelectsASingleServerOrSentinel(t *testing.T) {
	tests := []struct {
		url      string
		sentinel bool
		addrs    []string
		master   string
	}{
		{url: "redis://:pw@10.0.0.1:6380/2"},
		{url: "redis://s1:26379/0?master_name=mymaster&addr=s2:26379&addr=s3:26379", sentinel: true,
			addrs: []string{"s1:26379", "s2:26379", "s3:26379"}, master: "mymaster"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			c, err := Load(env(map[string]string{"REDIS_URL": tt.url}), nil, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			r, err := c.Redis()
			if err != nil {
				t.Fatal(err)
			}
			if (r.Failover != nil) != tt.sentinel {
				t.Fatalf("sentinel = %v, want %v", r.Failover != nil, tt.sentinel)
			}
			if tt.sentinel {
				if r.Failover.MasterName != tt.master || strings.Join(r.Failover.SentinelAddrs, ",") != strings.Join(tt.addrs, ",") {
					t.Fatalf("failover options %+v", r.Failover)
				}
				if _, ok := r.Asynq().(asynq.RedisFailoverClientOpt); !ok {
					t.Fatalf("asynq option %T", r.Asynq())
				}
			}
			if strings.Contains(r.String(), "pw") {
				t.Fatalf("String() leaks the password: %s", r)
			}
		})
	}
}

func TestEachLLMPurposeSendsOnlyItsOwnKey(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want map[string]LLMEndpoint
	}{
		{"one shared endpoint", map[string]string{"LLM_BASE_URL": "https://or/api/v1", "API_KEY": "sk"}, map[string]LLMEndpoint{
			PurposeChat:       {Purpose: PurposeChat, BaseURL: "https://or/api/v1", APIKey: "sk", Timeout: 120 * time.Second},
			PurposeExtraction: {Purpose: PurposeExtraction, BaseURL: "https://or/api/v1", APIKey: "sk", Timeout: 120 * time.Second},
			PurposeEmbeddings: {Purpose: PurposeEmbeddings, BaseURL: "https://or/api/v1", APIKey: "sk", Timeout: 60 * time.Second},
		}},
		{"a keyless extraction proxy never gets the chat key", map[string]string{
			"LLM_BASE_URL": "https://or/api/v1", "API_KEY": "sk", "EXTRACTION_LLM_BASE_URL": "http://proxy:8000/v1",
			"KA_EXTRACTION_HTTP_TIMEOUT_SECONDS": "30", "LLM_TIMEOUT_SECONDS": "45",
		}, map[string]LLMEndpoint{
			PurposeChat:       {Purpose: PurposeChat, BaseURL: "https://or/api/v1", APIKey: "sk", Timeout: 45 * time.Second},
			PurposeExtraction: {Purpose: PurposeExtraction, BaseURL: "http://proxy:8000/v1", Timeout: 30 * time.Second, Own: true},
			PurposeEmbeddings: {Purpose: PurposeEmbeddings, BaseURL: "https://or/api/v1", APIKey: "sk", Timeout: 60 * time.Second},
		}},
		{"embeddings elsewhere with their own key", map[string]string{
			"EMBEDDINGS_BASE_URL": "https://emb/v1", "EMBEDDINGS_API_KEY": "ek", "EMBEDDINGS_TIMEOUT_SECONDS": "5",
		}, map[string]LLMEndpoint{
			PurposeEmbeddings: {Purpose: PurposeEmbeddings, BaseURL: "https://emb/v1", APIKey: "ek", Timeout: 5 * time.Second, Own: true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(env(tt.env), nil, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]LLMEndpoint{}
			for _, e := range c.LLMEndpoints() {
				got[e.Purpose] = e
			}
			if len(got) != len(tt.want) {
				t.Fatalf("endpoints %+v, want %+v", got, tt.want)
			}
			for p, w := range tt.want {
				if got[p] != w {
					t.Errorf("%s: %+v, want %+v", p, got[p], w)
				}
			}
		})
	}
}

func TestQueueRedisURL(t *testing.T) {
	const bot = "redis://:botpw@bot:6379/0"
	tests := []struct {
		name      string
		env       map[string]string
		wantErr   bool
		separate  bool
		queueAddr string
		sentinel  bool
	}{
		{name: "unset shares REDIS_URL", env: map[string]string{"REDIS_URL": bot}, queueAddr: "bot:6379"},
		{name: "equal to REDIS_URL is the same Redis", env: map[string]string{"REDIS_URL": bot, "QUEUE_REDIS_URL": bot}, queueAddr: "bot:6379"},
		{name: "a second server", env: map[string]string{"REDIS_URL": bot, "QUEUE_REDIS_URL": "redis://:qpw@queue:6380/1"},
			separate: true, queueAddr: "queue:6380"},
		{name: "a Sentinel URL", env: map[string]string{"REDIS_URL": bot, "QUEUE_REDIS_URL": "redis://s1:26379/0?master_name=jobs&addr=s2:26379"},
			separate: true, sentinel: true},
		{name: "without REDIS_URL is refused", env: map[string]string{"QUEUE_REDIS_URL": "redis://queue:6380/0"}, wantErr: true},
		{name: "not a redis URL", env: map[string]string{"REDIS_URL": bot, "QUEUE_REDIS_URL": "http://:PW-s3cret@queue:6380"}, wantErr: true},
		{name: "empty master_name", env: map[string]string{"REDIS_URL": bot, "QUEUE_REDIS_URL": "redis://s1:26379/0?master_name="}, wantErr: true},
		{name: "bad port, password not echoed", env: map[string]string{"REDIS_URL": bot, "QUEUE_REDIS_URL": "redis://:PW-s3cret@queue:badport/0"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(env(tt.env), nil, io.Discard)
			if tt.wantErr {
				var ce *Error
				if !errors.As(err, &ce) || ce.Setting != "QUEUE_REDIS_URL" {
					t.Fatalf("err = %v, want a config error naming QUEUE_REDIS_URL", err)
				}
				if strings.Contains(err.Error(), "s3cret") {
					t.Fatalf("the error shows the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.SeparateQueue() != tt.separate {
				t.Fatalf("SeparateQueue() = %v, want %v", c.SeparateQueue(), tt.separate)
			}
			q, err := c.QueueRedis()
			if err != nil {
				t.Fatal(err)
			}
			if tt.sentinel {
				if q.Failover == nil || q.Failover.MasterName != "jobs" {
					t.Fatalf("queue Redis %+v, want Sentinel master jobs", q)
				}
				return
			}
			if q.Single == nil || q.Single.Addr != tt.queueAddr {
				t.Fatalf("queue Redis %v, want %s", q, tt.queueAddr)
			}
			if strings.Contains(q.String(), "pw") {
				t.Fatalf("String() leaks the password: %s", q)
			}
		})
	}
}
