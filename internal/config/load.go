package config

import (
	"encoding"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Error is a configuration error. It names the setting so the operator
// knows what to fix.
type Error struct {
	Setting string
	Reason  string
}

func (e *Error) Error() string { return fmt.Sprintf("config: %s: %s", e.Setting, e.Reason) }

// ErrHelp is returned by Load when -h or -help was given.
var ErrHelp = flag.ErrHelp

// Setting documents one configuration variable, as Config's tags declare it.
type Setting struct {
	Env     string
	Default string
	Help    string
	Secret  bool

	field int // index in Config
	tag   reflect.StructTag
}

// Flag is the command-line flag that overrides the variable.
func (s Setting) Flag() string { return strings.ReplaceAll(strings.ToLower(s.Env), "_", "-") }

// Settings lists every setting in declaration order, which is the order
// the README documents them.
func Settings() []Setting {
	t := reflect.TypeFor[Config]()
	out := make([]Setting, 0, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		env := f.Tag.Get("env")
		if env == "" {
			panic(fmt.Sprintf("config: field %s has no env tag", f.Name))
		}
		out = append(out, Setting{
			Env: env, Default: f.Tag.Get("default"), Help: f.Tag.Get("help"),
			Secret: f.Tag.Get("secret") == "true", field: i, tag: f.Tag,
		})
	}
	return out
}

// Load reads the settings from getenv and then from args (flags win). An
// invalid value yields an *Error naming the variable (or the flag).
func Load(getenv func(string) string, args []string, usage io.Writer) (Config, error) {
	var c Config
	settings := Settings()
	fs := flag.NewFlagSet("stargazer-jobs", flag.ContinueOnError)
	fs.SetOutput(usage)
	flagVals := make([]*string, len(settings))
	for i, s := range settings {
		flagVals[i] = fs.String(s.Flag(), "", fmt.Sprintf("%s (env %s, default %q)", s.Help, s.Env, s.Default))
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return c, ErrHelp
		}
		return c, &Error{Setting: "command line", Reason: err.Error()}
	}
	if fs.NArg() > 0 {
		return c, &Error{Setting: "command line", Reason: fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	v := reflect.ValueOf(&c).Elem()
	for i, s := range settings {
		raw, name := s.Default, s.Env
		if ev := getenv(s.Env); ev != "" {
			raw = ev
		}
		if explicit[s.Flag()] {
			raw, name = *flagVals[i], "-"+s.Flag()
		}
		if err := s.set(v.Field(s.field), raw); err != nil {
			reason := err.Error()
			if s.Secret {
				reason = strings.ReplaceAll(scrubUserinfo(reason), raw, "<redacted>")
			} else {
				reason = fmt.Sprintf("%q %s", raw, reason)
			}
			return c, &Error{Setting: name, Reason: reason}
		}
	}
	c.DashboardPath = strings.TrimSuffix(c.DashboardPath, "/")
	if (c.MonitorUser == "") != (c.MonitorPassword == "") {
		return c, &Error{Setting: "MONITOR_USER", Reason: "MONITOR_USER and MONITOR_PASSWORD must be set together"}
	}
	if (c.MonitorViewUser == "") != (c.MonitorViewPassword == "") {
		return c, &Error{Setting: "MONITOR_VIEW_USER", Reason: "MONITOR_VIEW_USER and MONITOR_VIEW_PASSWORD must be set together"}
	}
	if c.MonitorViewToken != "" && c.MonitorViewToken == c.MonitorToken {
		return c, &Error{Setting: "MONITOR_VIEW_TOKEN", Reason: "must differ from MONITOR_TOKEN"}
	}
	if c.MonitorViewUser != "" && c.MonitorViewUser == c.MonitorUser {
		return c, &Error{Setting: "MONITOR_VIEW_USER", Reason: "must differ from MONITOR_USER"}
	}
	if c.QueueRedisURL != "" && c.RedisURL == "" {
		return c, &Error{Setting: "QUEUE_REDIS_URL", Reason: "needs REDIS_URL: without it the bot's keys would go to an embedded in-process Redis that no other process shares; set REDIS_URL too, or unset QUEUE_REDIS_URL"}
	}
	if c.TaskCheckInterval < 10*time.Millisecond || c.TaskCheckInterval > time.Minute {
		return c, &Error{Setting: "TASK_CHECK_INTERVAL", Reason: fmt.Sprintf("%v is outside 10ms-1m", c.TaskCheckInterval)}
	}
	if err := c.checkCutover(); err != nil {
		return c, err
	}
	return c, nil
}

// set parses raw into the field by its type, then applies the tag's bounds
// and check.
func (s Setting) set(f reflect.Value, raw string) error {
	if err := s.check(raw); err != nil {
		return err
	}
	if u, ok := f.Addr().Interface().(encoding.TextUnmarshaler); ok {
		if err := u.UnmarshalText([]byte(raw)); err != nil {
			return fmt.Errorf("is not valid: %s", s.Help)
		}
		return nil
	}
	switch f.Interface().(type) {
	case string:
		f.SetString(raw)
	case bool:
		b, err := parseBool(raw)
		if err != nil {
			return err
		}
		f.SetBool(b)
	case int:
		n, err := strconv.Atoi(strings.TrimSpace(raw))
		if err != nil {
			return errors.New("must be an integer")
		}
		if err := s.bounds(float64(n)); err != nil {
			return err
		}
		f.SetInt(int64(n))
	case float64:
		x, err := strconv.ParseFloat(strings.TrimSpace(raw), 64)
		if err != nil {
			return errors.New("must be a number")
		}
		if err := s.bounds(x); err != nil {
			return err
		}
		f.SetFloat(x)
	case time.Duration:
		d, err := parseDuration(raw)
		if err != nil {
			return err
		}
		f.SetInt(int64(d))
	case []string:
		var list []string
		for _, item := range strings.Split(raw, ",") {
			if item = strings.TrimSpace(item); item != "" {
				list = append(list, item)
			}
		}
		f.Set(reflect.ValueOf(list))
	case Prices:
		ps, err := ParsePrices(raw)
		if err != nil {
			return err
		}
		f.Set(reflect.ValueOf(ps))
	case Budgets:
		bs, err := ParseBudgets(raw)
		if err != nil {
			return err
		}
		f.Set(reflect.ValueOf(bs))
	case map[string]time.Duration:
		m, err := parseIntervals(raw)
		if err != nil {
			return err
		}
		f.Set(reflect.ValueOf(m))
	default:
		panic(fmt.Sprintf("config: %s has an unsupported type %s", s.Env, f.Type()))
	}
	return nil
}

// bounds applies the min, max and above tags.
func (s Setting) bounds(x float64) error {
	lo, hi, above := s.tag.Get("min"), s.tag.Get("max"), s.tag.Get("above")
	switch {
	case above != "" && hi != "" && !(x > mustFloat(above) && x <= mustFloat(hi)):
		return fmt.Errorf("must be a number in (%s, %s]", above, hi)
	case lo != "" && hi != "" && (x < mustFloat(lo) || x > mustFloat(hi)):
		return fmt.Errorf("must be from %s to %s", lo, hi)
	case lo != "" && x < mustFloat(lo):
		return fmt.Errorf("must be at least %s", lo)
	case hi != "" && x > mustFloat(hi):
		return fmt.Errorf("must be at most %s", hi)
	case above != "" && x <= mustFloat(above):
		return fmt.Errorf("must be above %s", above)
	}
	return nil
}

func mustFloat(s string) float64 {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		panic(fmt.Sprintf("config: bad bound %q in a struct tag", s))
	}
	return f
}

// check applies the oneof and check tags to the raw value.
func (s Setting) check(raw string) error {
	if words := s.tag.Get("oneof"); words != "" {
		for _, w := range strings.Split(words, ",") {
			if raw == w {
				return nil
			}
		}
		return fmt.Errorf("must be one of %s", strings.ReplaceAll(words, ",", ", "))
	}
	switch name := s.tag.Get("check"); name {
	case "":
		return nil
	case "http_url":
		if raw != "" {
			u, err := url.Parse(raw)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return errors.New("must be an http:// or https:// URL")
			}
		}
	case "redis_url":
		if raw != "" {
			if _, err := (Config{RedisURL: raw}).Redis(); err != nil {
				var ce *Error
				if errors.As(err, &ce) {
					err = errors.New(ce.Reason)
				}
				return fmt.Errorf("must be a redis://, rediss:// or unix:// URL, or a Sentinel URL with master_name (%v)", err)
			}
		}
	case "falkordb_url":
		if raw != "" {
			if _, err := redis.ParseURL(raw); err != nil {
				return fmt.Errorf("must be a redis:// URL (%s)", scrubUserinfo(err.Error()))
			}
		}
	case "host_port":
		if _, _, err := net.SplitHostPort(raw); err != nil {
			return errors.New("must be host:port")
		}
	case "dashboard_path":
		if !strings.HasPrefix(raw, "/") || raw == "/" {
			return errors.New(`must start with "/" and not be "/" alone`)
		}
	case "deployment_id":
		if len(raw) > 128 || strings.IndexFunc(raw, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._:+-/", r))
		}) >= 0 {
			return errors.New("must be at most 128 letters, digits and . _ : + - /")
		}
	default:
		panic(fmt.Sprintf("config: %s names an unknown check %q", s.Env, name))
	}
	return nil
}

// userinfo matches the credentials of a URL, also inside an error message
// that quotes a URL url.Parse refused.
var userinfo = regexp.MustCompile(`(//)[^/@\s"]*@`)

// scrubUserinfo removes URL credentials from s: a parse error quotes the
// whole URL, password included.
func scrubUserinfo(s string) string { return userinfo.ReplaceAllString(s, "${1}<redacted>@") }

func parseBool(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "1", "t", "true", "yes", "y", "on":
		return true, nil
	case "0", "f", "false", "no", "n", "off":
		return false, nil
	}
	return false, errors.New("must be a boolean (true/false)")
}

// parseDuration accepts Go durations ("30s", "2m") and bare seconds ("30").
func parseDuration(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		if f <= 0 {
			return 0, errors.New("must be positive")
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, errors.New(`must be a duration such as "30s" or a number of seconds`)
	}
	if d <= 0 {
		return 0, errors.New("must be positive")
	}
	return d, nil
}

// parseIntervals parses TASK_INTERVALS: NAME=DURATION or NAME=off, comma
// separated.
func parseIntervals(v string) (map[string]time.Duration, error) {
	m := map[string]time.Duration{}
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		name, val, ok := strings.Cut(item, "=")
		name, val = strings.TrimSpace(name), strings.TrimSpace(val)
		if !ok || name == "" {
			return nil, fmt.Errorf("%q is not NAME=DURATION or NAME=off", item)
		}
		if strings.EqualFold(val, "off") {
			m[name] = 0
			continue
		}
		d, err := parseDuration(val)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", name, err)
		}
		if d < time.Second {
			return nil, fmt.Errorf("%s: interval must be at least 1s", name)
		}
		m[name] = d
	}
	return m, nil
}
