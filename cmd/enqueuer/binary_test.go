package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/store/prompts"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// binary is the enqueuer built once for the tests that run it as an
// operator would.
var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "enqueuer")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(dir)
		binary = filepath.Join(dir, "enqueuer")
		if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building the enqueuer: %v\n%s", err, out)
			return 1
		}
		return m.Run()
	}())
}

// runBinary runs the built enqueuer with env as its whole environment.
func runBinary(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errOut.String()
}

// commands is every command path of the CLI.
var commands = [][]string{
	{}, {"list"}, {"run"}, {"status"}, {"schedules"}, {"locks"}, {"unlock"},
	{"prompts"}, {"prompts", "add"}, {"prompts", "list"}, {"prompts", "cancel"},
	{"completion"}, {"completion", "bash"}, {"help"}, {"cursors"}, {"cursors", "list"}, {"cursors", "set"},
}

func TestHelpOnEveryCommandExitsZero(t *testing.T) {
	for _, path := range commands {
		for _, form := range [][]string{
			append(append([]string{}, path...), "-h"),
			append(append([]string{}, path...), "--help"),
			append([]string{"help"}, path...),
		} {
			t.Run(strings.Join(form, " "), func(t *testing.T) {
				code, out, stderr := runBinary(t, nil, form...)
				if code != exitOK || !strings.Contains(out, "Usage:") || stderr != "" {
					t.Errorf("exit %d, stdout %q, stderr %q; want exit 0 with usage on stdout", code, out, stderr)
				}
			})
		}
	}
}

func maxLineWidth(s string) int {
	n := 0
	for _, line := range strings.Split(s, "\n") {
		n = max(n, utf8.RuneCountInString(line))
	}
	return n
}

func TestCLIRefusesWhatTheIssueFound(t *testing.T) {
	srv := redistest.Start(t)
	env := map[string]string{"REDIS_URL": srv.URL()}
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	rdb := srv.Client(t)
	past := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	tests := []struct {
		name   string
		env    map[string]string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{name: "an extra argument before a flag is refused, not dropped with the flag",
			args: []string{"run", jobs.ScheduledPromptCleanup, "extra-arg", "--in", "1h"}, code: exitUsage, stderr: "accepts 1 arg(s), received 2"},
		{name: "a number with trailing letters", args: []string{"run", jobs.KGDecay, "--max-retry", "3abc"}, code: exitUsage, stderr: `invalid argument "3abc" for "--max-retry"`},
		{name: "a duration with trailing letters", args: []string{"run", jobs.KGDecay, "--in", "1hour"}, code: exitUsage, stderr: `invalid argument "1hour" for "--in"`},
		{name: "a delay of 292 years", args: []string{"run", jobs.GeminiKeyProbe, "--in", "2562047h", "--unique", "2562047h"}, code: exitUsage, stderr: "at most 720h"},
		{name: "a unique lock of 292 years", args: []string{"run", jobs.GeminiKeyProbe, "--unique", "2562047h"}, code: exitUsage, stderr: "between 1s and 168h"},
		{name: "a timeout over a day", args: []string{"run", jobs.KGDecay, "--timeout", "25h"}, code: exitUsage, stderr: "between 1s and 24h"},
		{name: "a time more than 30 days ahead", args: []string{"run", jobs.KGDecay, "--at", time.Now().Add(31 * 24 * time.Hour).UTC().Format(time.RFC3339)}, code: exitUsage, stderr: "30 days"},
		{name: "a prompt for a platform the bot does not serve", args: []string{"prompts", "add", "--platform", "irc", "--channel", "1", "--text", "x", "--in", "1h"}, code: exitUsage, stderr: "discord or matrix"},
		{name: "a prompt in the past by delay", args: []string{"prompts", "add", "--platform", "discord", "--channel", "1", "--text", "x", "--in", "-1h"}, code: exitUsage, stderr: "--in must be positive"},
		{name: "a prompt in the past by time", args: []string{"prompts", "add", "--platform", "discord", "--channel", "1", "--text", "x", "--at", past}, code: exitUsage, stderr: "in the past"},
		{name: "a prompt that never fires", args: []string{"prompts", "add", "--platform", "discord", "--channel", "1", "--text", "x"}, code: exitUsage, stderr: "give --at or --in"},
		{name: "a prompt that ends in the past", args: []string{"prompts", "add", "--platform", "matrix", "--channel", "!r:x", "--text", "x", "--in", "1h", "--every", "1h", "--until", past}, code: exitUsage, stderr: "--until"},
		{name: "a recurring prompt faster than a minute", args: []string{"prompts", "add", "--platform", "discord", "--channel", "1", "--text", "x", "--in", "1h", "--every", "10s"}, code: exitUsage, stderr: "at least one minute"},
		{name: "locks -h is help", args: []string{"locks", "-h"}, code: exitOK, stdout: "Usage:"},
		{name: "unlock -h is help", args: []string{"unlock", "-h"}, code: exitOK, stdout: "Usage:"},
		{name: "unlock of a non-singleton", args: []string{"unlock", jobs.ScheduledPromptTick}, code: exitUsage, stderr: "not a singleton"},
		{name: "an unknown command", args: []string{"frobnicate"}, code: exitUsage, stderr: `unknown command "frobnicate"`},
		{name: "an unknown flag", args: []string{"list", "--bogus"}, code: exitUsage, stderr: "unknown flag: --bogus"},
		{name: "an unknown prompts command", args: []string{"prompts", "frobnicate"}, code: exitUsage, stderr: `unknown prompts command "frobnicate"`},
		{name: "no command", args: nil, code: exitUsage, stdout: "Usage:", stderr: "a command is required"},
		{name: "an unknown task", args: []string{"run", "nope"}, code: exitUsage, stderr: `unknown task "nope"`},
		{name: "Redis unreachable", env: map[string]string{"REDIS_URL": "redis://127.0.0.1:1"}, args: []string{"run", jobs.KGDecay}, code: exitFailure, stderr: "unreachable"},
		{name: "bad configuration", env: map[string]string{"KA_ENABLED": "sometimes"}, args: []string{"list"}, code: exitUsage, stderr: "KA_ENABLED"},
		{name: "shell completion script", args: []string{"completion", "bash"}, code: exitOK, stdout: "bash completion"},
		{name: "completion of task names", args: []string{"__complete", "run", "kg_"}, code: exitOK, stdout: "kg_decay_task"},
		{name: "completion of singleton names", args: []string{"__complete", "unlock", ""}, code: exitOK, stdout: jobs.LimbicOrg},
		{name: "completion of queues", args: []string{"__complete", "run", jobs.KGDecay, "--queue", ""}, code: exitOK, stdout: "maintenance"},
		{name: "completion of platforms", args: []string{"__complete", "prompts", "add", "--platform", ""}, code: exitOK, stdout: "matrix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := env
			if tt.env != nil {
				e = tt.env
			}
			code, out, stderr := runBinary(t, e, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.stdout) || !strings.Contains(stderr, tt.stderr) {
				t.Errorf("exit %d\nstdout %q\nstderr %q\nwant exit %d, stdout containing %q, stderr containing %q", code, out, stderr, tt.code, tt.stdout, tt.stderr)
			}
			if strings.Contains(stderr, "goroutine ") {
				t.Errorf("stack trace in output: %s", stderr)
			}
		})
	}
	// Nothing the refused commands asked for reached Redis.
	for q := range jobs.Queues() {
		if info, err := insp.GetQueueInfo(q); err == nil && info.Size != 0 {
			t.Errorf("queue %s holds %d tasks after refused commands", q, info.Size)
		}
	}
	if n, _ := rdb.ZCard(context.Background(), prompts.DueKey).Result(); n != 0 {
		t.Errorf("%d prompts stored after refused commands", n)
	}
}

func TestFlagsAreReadAnywhereOnTheLine(t *testing.T) {
	srv := redistest.Start(t)
	env := map[string]string{"REDIS_URL": srv.URL()}
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	for _, args := range [][]string{
		{"run", jobs.ScheduledPromptCleanup, "--in", "1h"},
		{"run", "--in", "1h", jobs.ScheduledPromptCleanup},
		{"--help=false", "run", "--in=1h", jobs.ScheduledPromptCleanup, "--max-retry", "2"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			code, out, stderr := runBinary(t, env, args...)
			if code != exitOK {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			ti, err := insp.GetTaskInfo(jobs.QueueMaintenance, strings.TrimSpace(out))
			if err != nil {
				t.Fatal(err)
			}
			if ti.State != asynq.TaskStateScheduled || time.Until(ti.NextProcessAt) < 59*time.Minute {
				t.Errorf("state %s, next run in %v: the delay was ignored", ti.State, time.Until(ti.NextProcessAt))
			}
		})
	}
}

func TestTablesFitAHundredColumns(t *testing.T) {
	srv := redistest.Start(t)
	env := map[string]string{"REDIS_URL": srv.URL()}
	long := strings.Repeat("a long prompt text ", 20)
	if code, _, stderr := runBinary(t, env, "prompts", "add", "--platform", "matrix", "--channel", "!averyveryverylongroomid:matrix.example.org", "--text", long, "--in", "1h", "--every", "24h"); code != exitOK {
		t.Fatalf("prompts add: %s", stderr)
	}
	ctx := context.Background()
	srv.Client(t).HSet(ctx, "sgjobs:schedule:"+jobs.ScheduledPromptTick, map[string]any{
		"next_ms": time.Now().Add(time.Minute).UnixMilli(), "interval_ms": 60000,
		"last_enqueued_ms": time.Now().UnixMilli(), "last_task_id": "scheduled_prompt_tick@1", "last_outcome": "duplicate",
	})
	for _, args := range [][]string{{"list"}, {"prompts", "list"}, {"schedules"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			code, out, stderr := runBinary(t, env, args...)
			if code != exitOK {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if w := maxLineWidth(out); w > lineWidth {
				t.Errorf("a line of %d columns:\n%s", w, out)
			}
			_, wide, _ := runBinary(t, env, append(args, "--wide")...)
			if maxLineWidth(wide) <= maxLineWidth(out) && args[0] != "schedules" {
				t.Errorf("--wide shows no more:\n%s", wide)
			}
		})
	}
	_, out, _ := runBinary(t, env, "list")
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, jobs.ChannelHeartbeatChannel+" ") && !strings.Contains(line, "enqueued by other tasks") {
			t.Errorf("a child task is not called what it is: %s", line)
		}
	}
	if strings.Contains(out, "once at startup") {
		t.Errorf("list still says \"once at startup\":\n%s", out)
	}
	_, js, _ := runBinary(t, env, "list", "--json")
	var entries []catalogEntry
	if err := json.Unmarshal([]byte(js), &entries); err != nil || len(entries) != len(jobs.Catalog()) {
		t.Errorf("list --json: %v, %d entries", err, len(entries))
	}
}

// TestTheEnqueuerLeavesTheWorkersCodeOut keeps the CLI small: it enqueues
// and inspects, and never needs the handlers, the graph or the LLM client.
func TestTheEnqueuerLeavesTheWorkersCodeOut(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, pkg := range []string{"/handlers", "/internal/kg/graph", "/internal/clients/llm"} {
		for _, dep := range strings.Fields(string(out)) {
			if strings.HasSuffix(dep, "stargazer-jobs"+pkg) {
				t.Errorf("cmd/enqueuer imports %s", dep)
			}
		}
	}
}
