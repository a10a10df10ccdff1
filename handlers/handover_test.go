package handlers

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/cursors"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// handOverAt is a hand-over point fixed at one time for every task.
type handOverAt time.Time

func (h handOverAt) Point(context.Context, string) (time.Time, error) { return time.Time(h), nil }

// After a cut-over, auto_kg_extraction starts each channel at the start of
// the Python side's last run, not 24 h back: the day's earlier messages,
// which the Python side extracted, cost no call and no second mention.
func TestExtractionPlannersStartAtTheHandOverPointAfterACutOver(t *testing.T) {
	ctx := context.Background()
	v := newKGEnv(t)
	d := v.deps()
	d.HandOver = handOverAt(v.now.Add(-2 * time.Hour))
	before := chatter(t, v.rdb, guildChan, v.now.Add(-10*time.Hour), 0, 20)
	after := chatter(t, v.rdb, guildChan, v.now.Add(-time.Hour), 100, 20)
	if _, err := work(ctx, d, jobs.AutoKGExtraction, &jobs.Empty{}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.units.drain(ctx, d, false); err != nil {
		t.Fatal(err)
	}
	sent := sentCounts(v.llm.Calls())
	for _, text := range userTexts(before) {
		if sent[text] != 0 {
			t.Errorf("%q, from before the hand-over, sent %d times", text, sent[text])
		}
	}
	for _, text := range userTexts(after) {
		if sent[text] != 1 {
			t.Errorf("%q, from after the hand-over, sent %d times, want 1", text, sent[text])
		}
	}
}

// limbic_anchoring_worker's Python loop ran in real time: with the
// hand-over at its first Go pass, the first pass plans nothing of the last
// hour, and the next plans what arrived since.
func TestAnchoringPlansOnlyWhatArrivesAfterTheHandOver(t *testing.T) {
	ctx := context.Background()
	v := newKGEnv(t)
	d := v.deps()
	d.HandOver = handOverAt(v.now)
	chatter(t, v.rdb, guildChan, v.now.Add(-30*time.Minute), 0, 30)
	res, err := work(ctx, d, jobs.LimbicAnchoringWorker, &jobs.Empty{})
	if err != nil || res["units_planned"] != 0 || res["backlog_messages"] != json.Number("0") {
		t.Fatalf("first pass %v, %v: want nothing planned and no backlog", res, err)
	}
	fresh := chatter(t, v.rdb, guildChan, v.now.Add(-30*time.Minute), 61, 10) // 30 s apart from now+0:30
	v.now = v.now.Add(10 * time.Minute)
	if _, err := work(ctx, d, jobs.LimbicAnchoringWorker, &jobs.Empty{}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.units.drain(ctx, d, false); err != nil {
		t.Fatal(err)
	}
	sent := sentCounts(v.llm.Calls())
	if len(sent) != len(userTexts(fresh)) {
		t.Errorf("%d messages sent, want the %d that arrived after the hand-over", len(sent), len(userTexts(fresh)))
	}
	for _, text := range userTexts(fresh) {
		if sent[text] != 1 {
			t.Errorf("%q sent %d times, want 1", text, sent[text])
		}
	}
}

// A node's first log_rag_ingest run reads from the hand-over point when it
// is later than the 6 h look-back.
func TestLogIngestStartsAtTheHandOverPoint(t *testing.T) {
	e := newIngestEnv(t)
	e.d.HandOver = handOverAt(ingestNow.Add(-90 * time.Minute))
	e.j.add(5, func(i int) string { return fmt.Sprintf("line %d", i) })
	e.mustRun(t)
	want := fmt.Sprintf("--since=@%d", ingestNow.Add(-90*time.Minute).Unix())
	if args := e.j.args(); !strings.HasSuffix(args[0], want) {
		t.Errorf("first journalctl call %q, want it to start at the hand-over point (%s)", args[0], want)
	}
}

// limbic_sunset_processor does not synthesise again the days that ended
// before the hand-over (the Python side's), only the ones after.
func TestSunsetSkipsTheDaysBeforeTheHandOver(t *testing.T) {
	ctx := context.Background()
	v, summary := sunsetEnv(t)
	today := sunsetDay0.AddDate(0, 0, 3)
	yesterday := today.AddDate(0, 0, -1)
	v.now = today.Add(time.Hour)
	seedEntity(t, v.g, "Alpha", 5, yesterday.Add(10*time.Hour), yesterday.Add(10*time.Hour))
	seedEntity(t, v.g, "Delta", 3, sunsetDay0.Add(12*time.Hour), sunsetDay0.Add(12*time.Hour))
	d := v.deps()
	d.HandOver = handOverAt(yesterday.Add(8 * time.Hour)) // during yesterday
	res, err := work(ctx, d, jobs.LimbicSunsetProcessor, &jobs.Empty{})
	if err != nil || res["days_processed"] != 1 || res["llm_calls"] != 1 {
		t.Fatalf("first pass %v, %v: want only yesterday, the day of the hand-over", res, err)
	}
	if got, want := epochs(t, v.g), epochLine(yesterday, *summary, "Alpha"); got != want {
		t.Errorf("epochs\n%s\nwant\n%s", got, want)
	}
}

// What `enqueuer cursors` says of the watermark tasks is what they do.
func TestCursorTasksDescribeTheHandlers(t *testing.T) {
	for task, perRun := range map[string]int{jobs.ChannelSummarization: summaryMessages, jobs.ChannelHeartbeat: heartbeatMessages} {
		ct, ok := cursors.Lookup(task)
		if !ok || ct.PerRun != perRun {
			t.Errorf("cursors says %s reads %d messages a channel and run; the handler reads %d", task, ct.PerRun, perRun)
		}
	}
}

// An operator moves a planner's cursor past units already queued: the
// units still run but move nothing, the cursor stays where it was put, and
// the next pass plans only what comes after it.
func TestACursorSetByHandOverridesPlannedUnits(t *testing.T) {
	ctx := context.Background()
	v := newKGEnv(t)
	d := v.deps()
	chatter(t, v.rdb, guildChan, v.now.Add(-50*time.Minute), 0, 60)
	if res, err := work(ctx, d, jobs.LimbicAnchoringWorker, &jobs.Empty{}); err != nil || res["units_planned"] == 0 {
		t.Fatalf("planning: %v, %v", res, err)
	}
	change, err := cursors.Parse(jobs.LimbicAnchoringWorker, guildChan.String(), "now-5m", v.now)
	if err != nil {
		t.Fatal(err)
	}
	p, err := change.Resolve(ctx, cursors.OneRedis(v.rdb), v.now)
	if err != nil || len(p.Moves) != 1 || !p.Moves[0].DropsPlanned {
		t.Fatalf("resolve: %+v, %v; want one move dropping the planned segments", p, err)
	}
	if err := p.Apply(ctx, cursors.OneRedis(v.rdb), v.now); err != nil {
		t.Fatal(err)
	}
	set := msgcache.Position{TS: v.now.Add(-5 * time.Minute).UnixMilli()}
	if _, err := v.units.drain(ctx, d, true); err != nil {
		t.Fatal(err)
	}
	if got := cursorOf(t, v.rdb, cursors.AnchoringPrefix+guildChan.String()); got != set {
		t.Fatalf("cursor %v after the old units ran, want where it was set, %v", got, set)
	}
	before := len(v.llm.Calls())
	fresh := chatter(t, v.rdb, guildChan, v.now.Add(-5*time.Minute-1000*30*time.Second), 1000, 6) // from now-5m on, 30 s apart
	v.now = v.now.Add(time.Minute)
	if _, err := work(ctx, d, jobs.LimbicAnchoringWorker, &jobs.Empty{}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.units.drain(ctx, d, false); err != nil {
		t.Fatal(err)
	}
	sent := sentCounts(v.llm.Calls()[before:])
	if len(sent) != len(userTexts(fresh)) {
		t.Errorf("the pass after the set sent %d messages, want the %d after the cursor", len(sent), len(userTexts(fresh)))
	}
}
