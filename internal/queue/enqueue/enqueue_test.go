package enqueue_test

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/queue/enqueue"
	"github.com/stargazer/stargazer-jobs/jobs"
)

func TestPrepare(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	past := now.Add(-time.Hour)
	future := now.Add(time.Hour)
	farFuture := now.Add(enqueue.MaxDelay + time.Second)
	neg, big := -1, 101
	tests := []struct {
		name    string
		body    string
		at      *time.Time
		max     *int
		wantErr string
		check   func(t *testing.T, p enqueue.Prepared)
	}{
		{name: "defaults", body: `{"task":"scheduled_prompt_cleanup"}`, check: func(t *testing.T, p enqueue.Prepared) {
			if p.Queue != jobs.QueueMaintenance || string(p.Task.Payload()) != `{"days_to_keep":7}` {
				t.Errorf("queue %s payload %s", p.Queue, p.Task.Payload())
			}
		}},
		{name: "payload and queue override", body: `{"task":"scheduled_prompt_cleanup","payload":{"days_to_keep":2},"queue":"critical"}`, check: func(t *testing.T, p enqueue.Prepared) {
			if p.Queue != jobs.QueueCritical || string(p.Task.Payload()) != `{"days_to_keep":2}` {
				t.Errorf("queue %s payload %s", p.Queue, p.Task.Payload())
			}
		}},
		{name: "null payload means defaults", body: `{"task":"kg_decay_task","payload":null}`},
		{name: "at in the future", body: `{"task":"kg_decay_task"}`, at: &future},
		{name: "at in the past", body: `{"task":"kg_decay_task"}`, at: &past, wantErr: "in the past"},
		{name: "negative retries", body: `{"task":"kg_decay_task"}`, max: &neg, wantErr: "max_retry"},
		{name: "too many retries", body: `{"task":"kg_decay_task"}`, max: &big, wantErr: "max_retry"},
		{name: "short timeout", body: `{"task":"kg_decay_task","timeout":"10ms"}`, wantErr: "timeout"},
		{name: "timeout of zero", body: `{"task":"kg_decay_task","timeout":"0s"}`, wantErr: "timeout 0s: must be between 1s and 24h"},
		{name: "timeout just under a second", body: `{"task":"kg_decay_task","timeout":"999ms"}`, wantErr: "timeout 999ms: must be between 1s"},
		{name: "negative timeout", body: `{"task":"kg_decay_task","timeout":"-1s"}`, wantErr: "timeout -1s"},
		{name: "timeout at the lower bound", body: `{"task":"kg_decay_task","timeout":"1s"}`, check: func(t *testing.T, p enqueue.Prepared) {
			if !slices.ContainsFunc(p.Options, func(o asynq.Option) bool { return o.Type() == asynq.TimeoutOpt && o.Value() == time.Second }) {
				t.Errorf("options %v lack a timeout of 1s", p.Options)
			}
		}},
		{name: "short unique", body: `{"task":"kg_decay_task","unique":"10ms"}`, wantErr: "unique"},
		{name: "unique of zero", body: `{"task":"kg_decay_task","unique":"0s"}`, wantErr: "unique 0s: must be between 1s"},
		{name: "duplicate key in the payload", body: `{"task":"scheduled_prompt_cleanup","payload":{"days_to_keep":3,"days_to_keep":3650}}`, wantErr: `duplicate key "days_to_keep" in payload`},
		{name: "negative delay", body: `{"task":"kg_decay_task","in":"-1m"}`, wantErr: "negative"},
		{name: "unknown task", body: `{"task":"nope"}`, wantErr: "unknown task"},
		{name: "delay at the bound", body: `{"task":"kg_decay_task","in":"720h"}`},
		{name: "delay past the bound", body: `{"task":"kg_decay_task","in":"720h1s"}`, wantErr: "at most 720h"},
		{name: "delay of 292 years", body: `{"task":"gemini_key_probe","in":"2562047h"}`, wantErr: "at most 720h"},
		{name: "at past the bound", body: `{"task":"kg_decay_task"}`, at: &farFuture, wantErr: "more than 30 days ahead"},
		{name: "unique at the bound", body: `{"task":"kg_decay_task","unique":"168h"}`},
		{name: "unique past the bound", body: `{"task":"gemini_key_probe","unique":"2562047h"}`, wantErr: "between 1s and 168h"},
		{name: "timeout at the bound", body: `{"task":"kg_decay_task","timeout":"24h"}`},
		{name: "timeout past the bound", body: `{"task":"kg_decay_task","timeout":"24h1s"}`, wantErr: "between 1s and 24h"},
		{name: "node-local task", body: `{"task":"journal_stream"}`, wantErr: "is node-local"},
		{name: "invalid payload", body: `{"task":"scheduled_prompt_tick","payload":{"limit":-3}}`, wantErr: "limit must be"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r enqueue.Request
			if err := json.Unmarshal([]byte(tt.body), &r); err != nil {
				t.Fatal(err)
			}
			if tt.at != nil {
				r.At = tt.at
			}
			if tt.max != nil {
				r.MaxRetry = tt.max
			}
			p, err := enqueue.Prepare(jobs.Catalog(), r, now)
			if tt.wantErr != "" {
				if !errors.Is(err, enqueue.ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want ErrInvalid mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, p)
			}
		})
	}
}

func TestDurationJSON(t *testing.T) {
	var d enqueue.Duration
	if err := json.Unmarshal([]byte(`"90s"`), &d); err != nil || time.Duration(d) != 90*time.Second {
		t.Fatalf("%v %v", d, err)
	}
	if err := json.Unmarshal([]byte(`90`), &d); err == nil {
		t.Error("a bare number was accepted as a duration")
	}
	b, _ := json.Marshal(enqueue.Duration(time.Minute))
	if string(b) != `"1m0s"` {
		t.Errorf("marshal = %s", b)
	}
}

func TestDecodeRequestRefusesWhatIsNotExactlyOneRequest(t *testing.T) {
	tests := []struct {
		name, body, wantErr string
	}{
		{"one object", `{"task":"kg_decay_task"}`, ""},
		{"the same key in sibling objects", `{"task":"kg_decay_task","payload":{"a":{"id":1},"b":{"id":1},"list":[{"id":1},{"id":1}]}}`, ""},
		{"a key named like a value", `{"task":"kg_decay_task","payload":{"task":"task","x":["task","task"]}}`, ""},
		{"trailing white space", "{\"task\":\"kg_decay_task\"}\n\t ", ""},
		{"a second object", `{"task":"kg_decay_task"}{"task":"limbic_org_task"}`, "data after the JSON object"},
		{"trailing garbage", `{"task":"kg_decay_task"} x`, "data after the JSON object"},
		{"trailing comma", `{"task":"kg_decay_task"},`, "data after the JSON object"},
		{"unknown field", `{"task":"kg_decay_task","priority":1}`, "unknown field"},
		{"task twice", `{"task":"kg_decay_task","task":"scheduled_prompt_cleanup"}`, `duplicate key "task"`},
		{"task twice, same value", `{"task":"kg_decay_task","task":"kg_decay_task"}`, `duplicate key "task"`},
		{"payload twice", `{"task":"kg_decay_task","payload":{},"payload":{"days_to_keep":1}}`, `duplicate key "payload"`},
		{"timeout twice", `{"task":"kg_decay_task","timeout":"1h","timeout":"2h"}`, `duplicate key "timeout"`},
		{"key twice inside the payload", `{"task":"kg_decay_task","payload":{"a":1,"b":{"c":2},"a":3}}`, `duplicate key "payload.a"`},
		{"key twice deep in the payload", `{"task":"kg_decay_task","payload":{"list":[{"id":1},{"id":2,"id":3}]}}`, `duplicate key "payload.list[1].id"`},
		{"not an object", `[1]`, "cannot unmarshal"},
		{"empty", ``, "EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := enqueue.DecodeRequest(strings.NewReader(tt.body))
			if tt.wantErr == "" {
				if err != nil || req.Task != "kg_decay_task" {
					t.Fatalf("= %+v, %v", req, err)
				}
				return
			}
			if !errors.Is(err, enqueue.ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want ErrInvalid mentioning %q", err, tt.wantErr)
			}
		})
	}
}
