package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// artifacts is where the browser test leaves its screenshots.
func artifacts(t *testing.T) string {
	dir := os.Getenv("TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "..", "test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no chromium on PATH; install Debian's chromium package (scripts/test.sh does)")
	return ""
}

// seedStates leaves tasks completed, archived, scheduled and pending.
func seedStates(t *testing.T, srv *redistest.Server) {
	conn := asynq.RedisClientOpt{Addr: srv.Addr}
	client := asynq.NewClient(conn)
	defer client.Close()
	insp := asynq.NewInspector(conn)
	defer insp.Close()
	enq := func(task string, opts ...asynq.Option) string {
		info, err := client.Enqueue(asynq.NewTask(task, nil), opts...)
		if err != nil {
			t.Fatal(err)
		}
		return info.ID
	}
	done := enq(jobs.ScheduledPromptCleanup, asynq.Queue(jobs.QueueMaintenance), asynq.Retention(time.Hour))
	failed := enq(jobs.KGDecay, asynq.Queue(jobs.QueueDefault), asynq.MaxRetry(0))
	enq(jobs.ScheduledPromptTick, asynq.Queue(jobs.QueueCritical), asynq.ProcessIn(time.Hour))
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		a, errA := insp.GetTaskInfo(jobs.QueueMaintenance, done)
		b, errB := insp.GetTaskInfo(jobs.QueueDefault, failed)
		if errA == nil && errB == nil && a.State == asynq.TaskStateCompleted && b.State == asynq.TaskStateArchived {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := insp.PauseQueue(jobs.QueueMaintenance); err != nil {
		t.Fatal(err)
	}
	enq(jobs.ScheduledPromptCleanup, asynq.Queue(jobs.QueueMaintenance))
}

func TestDashboardShowsQueuesAndTasksInABrowser(t *testing.T) {
	srv := redistest.Start(t)
	p := start(t, srv.URL(), map[string]string{"MONITOR_TOKEN": "browser-token", "SCHEDULER_ENABLED": "false", "TASK_INTERVALS": "e2e_plain=off,e2e_single=off"})
	seedStates(t, srv)
	base := "http://" + p.Addr + "/dashboard"

	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("dashboard without credentials = %d, want 401", resp.StatusCode)
	}

	ctx := browser(t, 1400, 900)

	// Without credentials the browser gets the refusal too. (The first Run
	// starts the browser, so its context carries no timeout.)
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/")); err != nil {
		t.Fatal(err)
	}
	body, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(body, "unauthorized") {
		t.Errorf("unauthenticated page shows %q", body)
	}

	dir := artifacts(t)
	pages := []struct {
		name, path string
		want       []string
	}{
		{"queues", "/", []string{"critical", "default", "maintenance", "paused"}},
		{"archived", "/queues/default?status=archived", []string{"kg_decay_task", "handler not found"}},
		{"pending", "/queues/maintenance?status=pending", []string{"scheduled_prompt_cleanup"}},
		{"scheduled", "/queues/critical?status=scheduled", []string{"scheduled_prompt_tick"}},
		{"completed", "/queues/maintenance?status=completed", []string{"scheduled_prompt_cleanup"}},
	}
	if _, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders,
		network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": "Bearer browser-token"}}); err != nil {
		t.Fatal(err)
	}
	for _, pg := range pages {
		t.Run(pg.name, func(t *testing.T) {
			cond := "(() => { const t = document.body.innerText; return " +
				strings.Join(quoteAll(pg.want), " && ") + "; })()"
			showPage(t, ctx, base+pg.path, cond, filepath.Join(dir, "dashboard-"+pg.name+".png"))
		})
	}
	p.term()
}

func TestSchedulersPageShowsEveryPeriodicTaskInABrowser(t *testing.T) {
	srv := redistest.Start(t)
	p := start(t, srv.URL(), map[string]string{"MONITOR_TOKEN": "browser-token", "TASK_INTERVALS": "e2e_plain=1m,e2e_single=90s"})
	want := scheduledTasks(t, p)
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	// Both test tasks (no initial delay) have run once: every row has a
	// next time, and theirs a previous one too.
	waitEntries(t, insp, "every task published", 20*time.Second, func(es map[string]*asynq.SchedulerEntry) bool {
		return len(es) == len(want) && es["e2e_plain"] != nil && !es["e2e_plain"].Prev.IsZero() &&
			es["e2e_single"] != nil && !es["e2e_single"].Prev.IsZero()
	})
	var enqueued []string
	for len(enqueued) == 0 {
		enqueued = eventIDs(t, insp, "e2e_plain")
	}

	// Wide enough for asynqmon's table to show the Next and Prev columns
	// next to the long option lists.
	ctx := browser(t, 2000, 1000)
	if _, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders,
		network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": "Bearer browser-token"}}); err != nil {
		t.Fatal(err)
	}
	names, _ := json.Marshal(want)
	// One row per task, each with a next time ("in 58s"); the two that ran
	// with a previous one ("2s ago") and their TASK_INTERVALS spec.
	rows := `const rows = [...document.querySelectorAll("tbody tr")].map(r => r.innerText);
		const matching = n => rows.filter(r => r.split(/\s+/).includes(n));
		const row = n => matching(n)[0] || "";`
	cond := `(() => { ` + rows + `
		return ` + string(names) + `.every(n => matching(n).length === 1 && /\bin \d/.test(row(n))) &&
			["e2e_plain", "e2e_single"].every(n => /\d+s ago/.test(row(n))) &&
			row("e2e_plain").includes("@every 1m") && row("e2e_single").includes("@every 1m30s"); })()`
	dir := artifacts(t)
	pctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	if err := chromedp.Do(pctx, chromedp.Navigate("http://"+p.Addr+"/dashboard/schedulers")); err != nil {
		t.Fatal(err)
	}
	if ok, err := chromedp.Run(pctx, chromedp.Poll[bool](cond, chromedp.WithPollingTimeout(30*time.Second))); err != nil || !ok {
		text, _ := chromedp.Run(pctx, chromedp.Text(chromedp.CSS("body")))
		t.Fatalf("the Schedulers page never listed %v with next and previous times: %v\npage text: %.1500s", want, err, text)
	}
	// asynqmon caps its content at 1280 px and scrolls the table sideways;
	// lift the cap so the screenshot shows the Next and Prev columns beside
	// the task names.
	if _, err := chromedp.Run(pctx, chromedp.Evaluate[bool](`(() => { document.querySelectorAll(".MuiContainer-maxWidthLg").forEach(e => e.style.maxWidth = "none"); return true; })()`)); err != nil {
		t.Fatal(err)
	}
	waitShot(t, pctx, cond, filepath.Join(dir, "dashboard-schedulers.png"))

	// The history of e2e_plain lists the task ID the scheduler enqueued.
	clicked, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(() => { `+rows+`
		const tr = [...document.querySelectorAll("tbody tr")].find(r => r.innerText.split(/\s+/).includes("e2e_plain"));
		const b = tr && tr.querySelector("button"); if (b) b.click(); return !!b; })()`))
	if err != nil || !clicked {
		t.Fatalf("no history button on the e2e_plain row: %v", err)
	}
	waitShot(t, ctx, `document.body.innerText.includes(`+jsString(enqueued[len(enqueued)-1])+`)`,
		filepath.Join(dir, "dashboard-scheduler-history.png"))
	p.term()
}

// browser starts a headless Chromium for the test, with a window of
// width×height pixels.
func browser(t *testing.T, width, height int) context.Context {
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(width, height),
	)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	return ctx
}

// showPage opens url, waits until the JavaScript expression cond is true
// and saves a screenshot to shot.
func showPage(t *testing.T, ctx context.Context, url, cond, shot string) {
	t.Helper()
	pctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	if err := chromedp.Do(pctx, chromedp.Navigate(url)); err != nil {
		t.Fatal(err)
	}
	waitShot(t, pctx, cond, shot)
}

// waitShot waits until the JavaScript expression cond is true on the
// current page and saves a screenshot to shot.
func waitShot(t *testing.T, ctx context.Context, cond, shot string) {
	t.Helper()
	ok, err := chromedp.Run(ctx, chromedp.Poll[bool](cond, chromedp.WithPollingTimeout(30*time.Second)))
	if err != nil || !ok {
		text, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
		t.Fatalf("page never satisfied %s: %v\npage text: %.1500s", cond, err, text)
	}
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", shot)
}

func quoteAll(words []string) []string {
	out := make([]string, len(words))
	for i, w := range words {
		out[i] = "t.includes(" + jsString(w) + ")"
	}
	return out
}

func jsString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}
