package gemini

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/redact"
)

// Defaults of the prober.
const (
	// DefaultModel is the embedding model probed. Quotas are per model, so
	// it must be the model the pool's users call.
	DefaultModel = "gemini-embedding-001"
	// DefaultConcurrency bounds the probes in flight: a few keys at a time
	// is quick and does not look like a burst to Google.
	DefaultConcurrency = 4
	// DefaultTimeout bounds one probe.
	DefaultTimeout = 20 * time.Second
	// quotaTimeZone is where Google's per-day quotas reset at midnight.
	quotaTimeZone = "America/Los_Angeles"
	// minuteFallback is how long a 429 without a retry delay or a per-day
	// quota parks the key: per-minute quotas reset within a minute.
	minuteFallback = time.Minute
	// maxRetryDelay caps a server-supplied retry delay, so a nonsense
	// value cannot park a key for ever.
	maxRetryDelay = 25 * time.Hour
)

// ProberOptions configure a Prober.
type ProberOptions struct {
	// BaseURL is the Gemini API root, e.g. https://generativelanguage.googleapis.com.
	BaseURL string
	// Keys is the pool. Duplicates are probed once.
	Keys []string
	// Model is the embedding model probed (default DefaultModel).
	Model string
	// Concurrency bounds the probes in flight (default DefaultConcurrency).
	Concurrency int
	// Timeout bounds one probe (default DefaultTimeout).
	Timeout time.Duration
	// Transport overrides the HTTP transport (tests).
	Transport http.RoundTripper
}

// Prober probes every key of the pool and records the outcomes in a Pool.
type Prober struct {
	pool    *Pool
	baseURL string
	keys    []string
	model   string
	conc    int
	timeout time.Duration
	http    *http.Client
	pacific *time.Location
}

// NewProber returns a prober of o.Keys recording into pool. It fails when
// the Pacific time zone cannot be loaded (a minimal image without tzdata;
// the worker binary embeds it).
func NewProber(pool *Pool, o ProberOptions) (*Prober, error) {
	loc, err := time.LoadLocation(quotaTimeZone)
	if err != nil {
		return nil, fmt.Errorf("gemini: loading %s for quota resets: %w", quotaTimeZone, err)
	}
	if o.Model == "" {
		o.Model = DefaultModel
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	tr := o.Transport
	if tr == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
		tr = t
	}
	seen := map[string]bool{}
	var keys []string
	for _, k := range o.Keys {
		if fp := Fingerprint(k); k != "" && !seen[fp] {
			seen[fp] = true
			keys = append(keys, k)
		}
	}
	return &Prober{
		pool: pool, baseURL: strings.TrimRight(o.BaseURL, "/"), keys: keys,
		model: strings.TrimPrefix(o.Model, "models/"), conc: o.Concurrency, timeout: o.Timeout,
		http: &http.Client{Transport: tr}, pacific: loc,
	}, nil
}

// Outcome is one key's probe result. It holds the fingerprint, never the key.
type Outcome struct {
	Fingerprint string
	// Status is the key's status after the probe; for an inconclusive probe
	// (Err set) it is the status the key already had.
	Status Status
	// Until is when an exhausted key's quota resets.
	Until time.Time
	// Was is the status before the probe ("" for a new key).
	Was Status
	// Recovered is a key that was exhausted or invalid and answered.
	Recovered bool
	// Err is a short reason when the probe was inconclusive (network,
	// server error): the key's status was left as it was.
	Err string
	// Reason is Google's status for a 4xx (RESOURCE_EXHAUSTED,
	// API_KEY_INVALID...).
	Reason string
}

// Report is the outcome of probing the whole pool.
type Report struct {
	Keys, OK, Exhausted, Invalid, Recovered, Errors, Removed int
	Outcomes                                                 []Outcome
}

// ErrAllProbesFailed means no probe got a conclusive answer: Gemini (or the
// network) is down, so the pool state was left untouched.
var ErrAllProbesFailed = errors.New("gemini: no key probe got an answer")

// Probe probes every key, at most Concurrency at a time, records each
// conclusive outcome in the pool and drops from the pool the fingerprints of
// keys no longer configured. Running it twice in a row leaves the same state
// as running it once.
func (p *Prober) Probe(ctx context.Context, now time.Time) (Report, error) {
	outcomes := make([]Outcome, len(p.keys))
	sem := make(chan struct{}, p.conc)
	var wg sync.WaitGroup
	for i, key := range p.keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				outcomes[i] = Outcome{Fingerprint: Fingerprint(key), Err: "not probed: " + ctx.Err().Error()}
				return
			}
			outcomes[i] = p.probeOne(ctx, key, now)
		}()
	}
	wg.Wait()

	rep := Report{Keys: len(p.keys), Outcomes: outcomes}
	configured := map[string]bool{}
	for i := range outcomes {
		o := &outcomes[i]
		configured[o.Fingerprint] = true
		prev, known, err := p.pool.Get(ctx, o.Fingerprint)
		if err != nil {
			return rep, err
		}
		if known {
			o.Was = prev.Status
		}
		if o.Err != "" {
			rep.Errors++
			if err := p.pool.NoteFailure(ctx, o.Fingerprint, now, o.Err); err != nil {
				return rep, err
			}
			o.Status = cmpStatus(prev.Status, Unknown)
			o.Until = prev.ExhaustedUntil
			continue
		}
		o.Recovered = o.Status == OK && (prev.Status == Exhausted || prev.Status == Invalid)
		lastErr := ""
		if o.Status != OK {
			lastErr = o.Reason
		}
		if err := p.pool.Set(ctx, State{Fingerprint: o.Fingerprint, Status: o.Status, ExhaustedUntil: o.Until, LastProbe: now, LastError: lastErr}); err != nil {
			return rep, err
		}
		switch o.Status {
		case OK:
			rep.OK++
		case Exhausted:
			rep.Exhausted++
		case Invalid:
			rep.Invalid++
		}
		if o.Recovered {
			rep.Recovered++
		}
	}

	known, err := p.pool.Fingerprints(ctx)
	if err != nil {
		return rep, err
	}
	var stale []string
	for _, fp := range known {
		if !configured[fp] {
			stale = append(stale, fp)
		}
	}
	if err := p.pool.Remove(ctx, stale...); err != nil {
		return rep, err
	}
	rep.Removed = len(stale)
	if rep.Keys > 0 && rep.Errors == rep.Keys {
		return rep, fmt.Errorf("%w (%d keys; first: %s)", ErrAllProbesFailed, rep.Keys, outcomes[0].Err)
	}
	return rep, nil
}

func cmpStatus(s, fallback Status) Status {
	if s == "" {
		return fallback
	}
	return s
}

type embedRequest struct {
	Model   string `json:"model"`
	Content struct {
		Parts []struct {
			Text string `json:"text"`
		} `json:"parts"`
	} `json:"content"`
}

type embedResponse struct {
	Embedding *struct {
		Values []float32 `json:"values"`
	} `json:"embedding"`
}

// probeOne makes the cheapest call the embedding pool makes, one embedding
// of one word, and classifies the answer. The key travels in the
// x-goog-api-key header, never in the URL, so no error text carries it.
func (p *Prober) probeOne(ctx context.Context, key string, now time.Time) Outcome {
	fp := Fingerprint(key)
	o := Outcome{Fingerprint: fp}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	var body embedRequest
	body.Model = "models/" + p.model
	body.Content.Parts = append(body.Content.Parts, struct {
		Text string `json:"text"`
	}{Text: "ping"})
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.baseURL+"/v1beta/models/"+p.model+":embedContent", bytes.NewReader(b))
	if err != nil {
		o.Err = short(key, err.Error())
		return o
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("x-goog-api-key", key)
	resp, err := p.http.Do(req)
	if err != nil {
		o.Err = short(key, err.Error())
		return o
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		o.Err = short(key, "reading answer: "+err.Error())
		return o
	}
	switch c := resp.StatusCode; {
	case c == http.StatusOK:
		var er embedResponse
		if err := json.Unmarshal(data, &er); err != nil || er.Embedding == nil || len(er.Embedding.Values) == 0 {
			o.Err = "HTTP 200 without an embedding"
			return o
		}
		o.Status = OK
	case c == http.StatusTooManyRequests:
		e := parseError(data)
		o.Status = Exhausted
		o.Reason = short(key, fmt.Sprintf("HTTP 429 %s", cmpString(e.Status, "RESOURCE_EXHAUSTED")))
		o.Until = p.resetTime(e, resp.Header.Get("Retry-After"), now)
	case c == http.StatusBadRequest:
		e := parseError(data)
		if !e.hasReason("API_KEY_INVALID") {
			// A bad request that is not about the key (a wrong model
			// name...) says nothing about the key.
			o.Err = short(key, fmt.Sprintf("HTTP 400 %s: %s", e.Status, e.Message))
			return o
		}
		o.Status = Invalid
		o.Reason = "HTTP 400 API_KEY_INVALID"
	case c == http.StatusUnauthorized || c == http.StatusForbidden:
		e := parseError(data)
		o.Status = Invalid
		o.Reason = short(key, fmt.Sprintf("HTTP %d %s", c, cmpString(e.Status, http.StatusText(c))))
	default:
		e := parseError(data)
		o.Err = short(key, fmt.Sprintf("HTTP %d %s", c, cmpString(e.Status, http.StatusText(c))))
	}
	return o
}

// resetTime is when an exhausted key's quota resets: the next midnight in
// Pacific time for a per-day quota, else the server's retry delay, else a
// minute (per-minute quotas).
func (p *Prober) resetTime(e googleError, retryAfter string, now time.Time) time.Time {
	if e.perDay() {
		return NextPacificMidnight(now, p.pacific)
	}
	d, ok := e.retryDelay()
	if !ok {
		if s, err := time.ParseDuration(strings.TrimSpace(retryAfter) + "s"); err == nil && s > 0 {
			d, ok = s, true
		}
	}
	if !ok || d <= 0 {
		d = minuteFallback
	}
	return now.Add(min(d, maxRetryDelay))
}

// NextPacificMidnight is the first midnight in loc strictly after now: when
// Google's per-day quotas reset. time.Date normalises day+1 across month
// ends and DST changes.
func NextPacificMidnight(now time.Time, loc *time.Location) time.Time {
	t := now.In(loc)
	return time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, loc)
}

// googleError is the body of a Google API error.
type googleError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Status  string `json:"status"`
	Details []struct {
		Type       string `json:"@type"`
		Reason     string `json:"reason"`
		RetryDelay string `json:"retryDelay"`
		Violations []struct {
			QuotaMetric string `json:"quotaMetric"`
			QuotaID     string `json:"quotaId"`
		} `json:"violations"`
	} `json:"details"`
}

func parseError(data []byte) googleError {
	var body struct {
		Error googleError `json:"error"`
	}
	_ = json.Unmarshal(data, &body)
	return body.Error
}

func (e googleError) hasReason(reason string) bool {
	for _, d := range e.Details {
		if d.Reason == reason {
			return true
		}
	}
	return false
}

func (e googleError) perDay() bool {
	for _, d := range e.Details {
		for _, v := range d.Violations {
			if strings.Contains(strings.ToLower(v.QuotaID), "perday") || strings.Contains(strings.ToLower(v.QuotaMetric), "per_day") {
				return true
			}
		}
	}
	return false
}

func (e googleError) retryDelay() (time.Duration, bool) {
	for _, d := range e.Details {
		if strings.HasSuffix(d.Type, "google.rpc.RetryInfo") && d.RetryDelay != "" {
			// A protobuf Duration in JSON: "37s", "0.5s", "1.000340s".
			if v, err := time.ParseDuration(d.RetryDelay); err == nil {
				return v, true
			}
		}
	}
	return 0, false
}

func cmpString(s, fallback string) string {
	if s == "" {
		return fallback
	}
	return s
}

// short makes a reason safe to store and log: the key removed (in case a
// transport or server echoed it), then the text bounded, in that order so
// a key echoed near the cut is never left half visible.
func short(key, s string) string { return redact.Excerpt([]byte(s), 200, key) }
