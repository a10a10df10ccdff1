package handlers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/clients/gemini"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/platform/discord"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

type nopCounter struct{}

func (nopCounter) AddItems(string, string, float64) {}

type nopLimiter struct{}

func (nopLimiter) Take(context.Context) (time.Duration, error) { return 0, nil }
func (nopLimiter) Interval() time.Duration                     { return time.Second }

// everything is a Deps offering every dependency, each pointing nowhere
// useful: the workers are built from it, never run.
func everything(t *testing.T) Deps {
	t.Helper()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr})
	t.Cleanup(func() { client.Close() })
	prober, err := gemini.NewProber(gemini.NewPool(rdb), gemini.ProberOptions{BaseURL: "http://127.0.0.1:1", Keys: []string{"AIzaSyREGISTRY"}})
	if err != nil {
		t.Fatal(err)
	}
	return Deps{
		Redis: rdb, Logger: slog.New(slog.DiscardHandler), Now: time.Now,
		LLM:      llm.New(llm.Options{BaseURL: "http://127.0.0.1:1/v1"}),
		Embedder: llm.New(llm.Options{BaseURL: "http://127.0.0.1:1/v1"}),
		Enqueuer: client, Events: events.NewPublisher(rdb, "debug-events"), Graph: &countingGraph{},
		Counter: nopCounter{}, KeyProber: prober, EmbedLimiter: nopLimiter{},
		Platforms: []Platform{discord.New(discord.Options{BaseURL: "http://127.0.0.1:1/api/v10", Token: "t"})},
		Intervals: map[string]time.Duration{},
	}
}

// allWorkers are the queued workers and the node-local ones.
func allWorkers() map[string]builder {
	all := builders()
	maps.Copy(all, nodeWorkers())
	return all
}

func TestEveryQueuedCatalogTaskHasAWorker(t *testing.T) {
	fns := builders()
	local := NodeLocal(Deps{})
	for _, s := range jobs.Catalog() {
		_, queued := fns[s.Name]
		switch {
		case s.Kind == jobs.NodeLocal && (local[s.Name] == nil || queued):
			t.Errorf("%s is node-local: want a node-local loop and no queued worker", s.Name)
		case s.Kind != jobs.NodeLocal && !queued:
			t.Errorf("%s has no worker", s.Name)
		}
	}
	for name := range fns {
		if _, ok := jobs.Lookup(name); !ok {
			t.Errorf("worker for %s, which is not in the catalog", name)
		}
	}
}

// Every worker is built with every dependency on offer: a constructor that
// takes one its task does not declare panics (kit.need), so the catalog's
// Requires|Needs is all a worker can use.
func TestWorkersUseOnlyDeclaredDependencies(t *testing.T) {
	d := everything(t)
	for name, b := range allWorkers() {
		t.Run(name, func(t *testing.T) {
			spec, _ := jobs.Lookup(name)
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("building the worker: %v", r)
				}
			}()
			if b.handler(newKit(d, spec)) == nil {
				t.Fatal("no handler")
			}
		})
	}
	t.Run("registering the catalog", func(t *testing.T) {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("registering: %v", r)
			}
		}()
		all := jobs.Redis | jobs.KG | jobs.LLM | jobs.Platform | jobs.GeminiKeys | jobs.Embeddings
		for _, r := range Register(asynq.NewServeMux(), d, jobs.Catalog(), all) {
			if spec, _ := jobs.Lookup(r.Task); r.Registered == (spec.Kind == jobs.NodeLocal) {
				t.Errorf("%+v", r)
			}
		}
	})
}

func TestKitRefusesUndeclaredDependencies(t *testing.T) {
	d := everything(t)
	spec, _ := jobs.Lookup(jobs.ScheduledPromptCleanup) // declares Redis only
	k := newKit(d, spec)
	if k.Redis() == nil {
		t.Fatal("declared Redis not handed out")
	}
	for name, take := range map[string]func(){
		"graph": func() { k.Graph() }, "llm": func() { k.LLM() }, "embedder": func() { k.Embedder() },
		"key prober": func() { k.KeyProber() }, "platforms": func() { k.Platforms() },
	} {
		func() {
			defer func() {
				r := recover()
				if r == nil || !strings.Contains(fmt.Sprint(r), jobs.ScheduledPromptCleanup) {
					t.Errorf("%s: recovered %v, want a panic naming the task", name, r)
				}
			}()
			take()
		}()
	}
	if k.Deps.Redis != nil || k.Deps.Graph != nil || k.Deps.LLM != nil {
		t.Error("the kit's plain Deps still hold declarable dependencies")
	}
}

// samplePayloads are valid payloads of the tasks whose defaults are not.
var samplePayloads = map[string]string{
	jobs.ChannelHeartbeatChannel: `{"platform":"discord","channel_id":"1"}`,
	jobs.EmbedMessages:           `{"keys":["sg:msg:discord:1:2"]}`,
	jobs.KGExtractUnit:           `{"task":"limbic_anchoring_worker","segments":[{"channel":"discord:1","after":{"ts":1,"key":""},"end":{"ts":2,"key":"sg:msg:discord:1:2"}}]}`,
}

func TestWorkersTakeTheirCatalogPayload(t *testing.T) {
	for name, b := range allWorkers() {
		spec, _ := jobs.Lookup(name)
		p, err := jobs.DecodePayload(spec, []byte(samplePayloads[name]))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !b.takes(p) {
			t.Errorf("%s: its worker does not take %T, the catalog's payload", name, p)
		}
	}
	// A mismatch (a catalog bug) is refused before any work, for good.
	spec, _ := jobs.Lookup(jobs.ScheduledPromptTick)
	run := builders()[jobs.ScheduledPromptTick].handler(newKit(everything(t), spec))
	_, err := run(context.Background(), &jobs.Empty{})
	if !errors.Is(err, jobs.ErrInvalidPayload) || !errors.Is(err, asynq.SkipRetry) ||
		!strings.Contains(err.Error(), "*jobs.PromptTick") || !strings.Contains(err.Error(), "*jobs.Empty") {
		t.Errorf("err = %v, want an invalid payload naming both types, not retried", err)
	}
}

// A handler built without a dependency its worker takes (Deps that
// disagree with the available set) refuses to run, naming what is missing,
// instead of dereferencing nil.
func TestWorkersWithoutTheirDependenciesRefuseToRun(t *testing.T) {
	for name, b := range allWorkers() {
		spec, _ := jobs.Lookup(name)
		p, err := jobs.DecodePayload(spec, []byte(samplePayloads[name]))
		if err != nil {
			t.Fatal(err)
		}
		_, err = b.handler(newKit(Deps{}, spec))(context.Background(), p)
		if !errors.Is(err, asynq.SkipRetry) || !strings.Contains(err.Error(), name+": no ") {
			t.Errorf("%s: err = %v, want a SkipRetry error naming what is missing", name, err)
		}
	}
}

// countingGraph is a graph that answers every query with nothing.
type countingGraph struct{ writes, reads int }

func (c *countingGraph) Query(context.Context, string, map[string]any, ...graph.Option) (*graph.Result, error) {
	c.writes++
	return &graph.Result{}, nil
}

func (c *countingGraph) ROQuery(context.Context, string, map[string]any, ...graph.Option) (*graph.Result, error) {
	c.reads++
	return &graph.Result{}, nil
}
