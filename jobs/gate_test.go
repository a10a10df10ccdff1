package jobs

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func ptr[T any](v T) *T { return &v }

func fullEnv() Env {
	return Env{
		Available:      Redis | KG | LLM | Platform | GeminiKeys | Embeddings,
		ChatLLMEnabled: true,
		Flags: map[string]bool{
			"legacy_kg_extraction": true, "background_scheduler_log_rag_ingest_enabled": true,
			"starwiki_enabled": true, "ka_enabled": true, "ka_dedup_enabled": true, "ka_org_enabled": true,
		},
	}
}

func decisionFor(t *testing.T, ds []Decision, name string) Decision {
	t.Helper()
	for _, d := range ds {
		if d.Spec.Name == name {
			return d
		}
	}
	t.Fatalf("no decision for %s", name)
	return Decision{}
}

func TestGateSchedulesEverythingWhenEverythingIsConfigured(t *testing.T) {
	for _, d := range Gate(Catalog(), fullEnv()) {
		if !d.Scheduled {
			t.Errorf("%s skipped: %s", d.Spec.Name, d.SkipReason)
		}
	}
}

func TestGate(t *testing.T) {
	tests := []struct {
		name       string
		mutate     func(*Env)
		task       string
		scheduled  bool
		reasonHas  string
		wantPeriod time.Duration
	}{
		{"redis missing drops redis tasks", func(e *Env) { e.Available &^= Redis }, ScheduledPromptCleanup, false, "REDIS_URL", 0},
		{"redis missing drops bot-runtime tasks", func(e *Env) { e.Available &^= Redis }, LimbicMaintenance, false, "bot runtime", 0},
		{"kg missing drops decay", func(e *Env) { e.Available &^= KG }, KGDecay, false, "FALKORDB_URL", 0},
		{"llm missing drops consolidation", func(e *Env) { e.Available &^= LLM }, KGConsolidation, false, "LLM_BASE_URL", 0},
		{"chat llm off drops prompt tick", func(e *Env) { e.ChatLLMEnabled = false }, ScheduledPromptTick, false, "CHAT_LLM_ENABLED=false", 0},
		{"chat llm off drops anamnesis", func(e *Env) { e.ChatLLMEnabled = false }, AnamnesisDigest, false, "CHAT_LLM_ENABLED=false", 0},
		{"chat llm off keeps cleanup", func(e *Env) { e.ChatLLMEnabled = false }, ScheduledPromptCleanup, true, "", 0},
		{"chat llm off keeps decay", func(e *Env) { e.ChatLLMEnabled = false }, KGDecay, true, "", 0},
		{"chat llm off keeps gemini probe", func(e *Env) { e.ChatLLMEnabled = false }, GeminiKeyProbe, true, "", 0},
		{"chat llm off keeps limbic maintenance (F9-4)", func(e *Env) { e.ChatLLMEnabled = false }, LimbicMaintenance, true, "", 0},
		{"log rag ingest is opt-in", func(e *Env) { e.Flags["background_scheduler_log_rag_ingest_enabled"] = false }, LogRAGIngest, false, "BACKGROUND_SCHEDULER_LOG_RAG_INGEST_ENABLED", 0},
		{"legacy extraction is opt-in", func(e *Env) { delete(e.Flags, "legacy_kg_extraction") }, AutoKGExtraction, false, "LEGACY_KG_EXTRACTION", 0},
		{"starwiki is opt-in", func(e *Env) { e.Flags["starwiki_enabled"] = false }, StarwikiLint, false, "STARWIKI_ENABLED", 0},
		{"ka_enabled off drops anchoring", func(e *Env) { e.Flags["ka_enabled"] = false }, LimbicAnchoringWorker, false, "KA_ENABLED=false", 0},
		{"ka_enabled off drops sunset", func(e *Env) { e.Flags["ka_enabled"] = false }, LimbicSunsetProcessor, false, "KA_ENABLED", 0},
		{"ka_enabled off drops maintenance", func(e *Env) { e.Flags["ka_enabled"] = false }, LimbicMaintenance, false, "KA_ENABLED", 0},
		{"ka_dedup off drops dedup", func(e *Env) { e.Flags["ka_dedup_enabled"] = false }, LimbicDedup, false, "KA_DEDUP_ENABLED", 0},
		{"ka_org off drops org", func(e *Env) { e.Flags["ka_org_enabled"] = false }, LimbicOrg, false, "KA_ORG_ENABLED", 0},
		{"platform missing drops backfill", func(e *Env) { e.Available &^= Platform }, StartupChannelBackfill, false, "DISCORD_BOT_TOKEN", 0},
		{"gemini keys missing drops probe", func(e *Env) { e.Available &^= GeminiKeys }, GeminiKeyProbe, false, "GEMINI_API_KEYS", 0},
		{"starwiki interval from minutes", func(e *Env) { e.StarwikiLintIntervalMinutes = ptr(30.0) }, StarwikiLint, true, "", 30 * time.Minute},
		{"starwiki interval floor is 300s", func(e *Env) { e.StarwikiLintIntervalMinutes = ptr(1.0) }, StarwikiLint, true, "", 300 * time.Second},
		{"starwiki interval of 0 minutes is the 300s floor, as in the original", func(e *Env) { e.StarwikiLintIntervalMinutes = ptr(0.0) }, StarwikiLint, true, "", 300 * time.Second},
		{"starwiki TASK_INTERVALS override is floored at 300s too", func(e *Env) { e.Intervals = map[string]time.Duration{StarwikiLint: time.Minute} }, StarwikiLint, true, "", 300 * time.Second},
		{"starwiki default interval is an hour", func(e *Env) {}, StarwikiLint, true, "", time.Hour},
		{"org interval from ka_org_interval_seconds", func(e *Env) { e.KAOrgIntervalSeconds = 900 }, LimbicOrg, true, "", 900 * time.Second},
		{"unimplemented handler is skipped", func(e *Env) { e.Implemented = map[string]bool{ScheduledPromptTick: true} }, KGDecay, false, "no handler", 0},
		{"implemented handler is kept", func(e *Env) { e.Implemented = map[string]bool{ScheduledPromptTick: true} }, ScheduledPromptTick, true, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := fullEnv()
			tt.mutate(&env)
			d := decisionFor(t, Gate(Catalog(), env), tt.task)
			if d.Scheduled != tt.scheduled {
				t.Fatalf("scheduled = %v (reason %q), want %v", d.Scheduled, d.SkipReason, tt.scheduled)
			}
			if !strings.Contains(d.SkipReason, tt.reasonHas) {
				t.Errorf("reason %q does not mention %q", d.SkipReason, tt.reasonHas)
			}
			if tt.wantPeriod != 0 && d.Interval != tt.wantPeriod {
				t.Errorf("interval = %v, want %v", d.Interval, tt.wantPeriod)
			}
		})
	}
}

func TestGateGivesEverySkipAReason(t *testing.T) {
	for _, d := range Gate(Catalog(), Env{}) {
		if d.Scheduled {
			continue
		}
		if d.SkipReason == "" {
			t.Errorf("%s skipped without a reason", d.Spec.Name)
		}
	}
}

func TestGateIsPure(t *testing.T) {
	env := fullEnv()
	a, b := Gate(Catalog(), env), Gate(Catalog(), env)
	for i := range a {
		if a[i].Scheduled != b[i].Scheduled || a[i].SkipReason != b[i].SkipReason || a[i].Interval != b[i].Interval {
			t.Errorf("%s: two calls disagree", a[i].Spec.Name)
		}
	}
}

func TestDecodePayload(t *testing.T) {
	cleanup, _ := Lookup(ScheduledPromptCleanup)
	tick, _ := Lookup(ScheduledPromptTick)
	decay, _ := Lookup(KGDecay)
	beat, _ := Lookup(ChannelHeartbeatChannel)
	embed, _ := Lookup(EmbedMessages)
	tests := []struct {
		name    string
		spec    Spec
		data    string
		wantErr string
		check   func(Payload) bool
	}{
		{"empty data gives defaults", cleanup, "", "", func(p Payload) bool { return p.(*PromptCleanup).DaysToKeep == 7 }},
		{"field overrides default", cleanup, `{"days_to_keep": 30}`, "", func(p Payload) bool { return p.(*PromptCleanup).DaysToKeep == 30 }},
		{"out of range", cleanup, `{"days_to_keep": 0}`, "days_to_keep must be", nil},
		{"unknown field", cleanup, `{"days": 3}`, "unknown field", nil},
		{"wrong type", tick, `{"limit": "many"}`, "cannot unmarshal", nil},
		{"not an object", tick, `[1,2]`, "cannot unmarshal", nil},
		{"trailing data", tick, `{"limit": 5} {}`, "unexpected data", nil},
		{"malformed json", tick, `{"limit":`, "unexpected EOF", nil},
		{"invalid utf-8", decay, "{\"x\":\"\xff\"}", "UTF-8", nil},
		{"oversize", decay, `{"pad":"` + strings.Repeat("a", MaxPayloadBytes) + `"}`, "exceeds", nil},
		{"empty object for no-arg task", decay, `{}`, "", nil},
		{"argument to no-arg task", decay, `{"x":1}`, "unknown field", nil},
		{"channel ref", beat, `{"platform":"matrix","channel_id":"!r:x.org"}`, "", func(p Payload) bool { return p.(*ChannelRef).ChannelID == "!r:x.org" }},
		{"child task without its channel", beat, ``, "platform must be", nil},
		{"unknown platform", beat, `{"platform":"irc","channel_id":"#a"}`, "platform must be", nil},
		{"embed batch", embed, `{"keys":["sg:msg:discord:1:2"]}`, "", func(p Payload) bool { return len(p.(*EmbedBatch).Keys) == 1 }},
		{"embed batch of foreign keys", embed, `{"keys":["asynq:x"]}`, "not a message key", nil},
		{"empty embed batch", embed, `{"keys":[]}`, "keys must hold", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := DecodePayload(tt.spec, []byte(tt.data))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrInvalidPayload) {
					t.Fatalf("err = %v, want one wrapping ErrInvalidPayload containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil && !tt.check(p) {
				t.Errorf("unexpected payload %+v", p)
			}
		})
	}
}
