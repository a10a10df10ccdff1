package e2e

import (
	"context"
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
	base := "http://" + p.addr + "/dashboard"

	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("dashboard without credentials = %d, want 401", resp.StatusCode)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1400, 900),
	)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()

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
			pctx, cancel := context.WithTimeout(ctx, 45*time.Second)
			defer cancel()
			if err := chromedp.Do(pctx, chromedp.Navigate(base+pg.path)); err != nil {
				t.Fatal(err)
			}
			ok, err := chromedp.Run(pctx, chromedp.Poll[bool](cond, chromedp.WithPollingTimeout(30*time.Second)))
			if err != nil || !ok {
				text, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
				t.Fatalf("page %s never showed %v: %v\npage text: %.600s", pg.path, pg.want, err, text)
			}
			shot, err := chromedp.Run(pctx, chromedp.CaptureScreenshot())
			if err != nil {
				t.Fatal(err)
			}
			name := filepath.Join(dir, "dashboard-"+pg.name+".png")
			if err := os.WriteFile(name, shot, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("screenshot: %s", name)
		})
	}
	p.term()
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
