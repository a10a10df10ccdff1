package app

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/jobs"
)

// StartupRetention is how long a startup task stays in Redis after it
// finished, keeping its ID taken: a worker of the same deployment that
// starts (or restarts) within it does not enqueue the task again.
const StartupRetention = 24 * time.Hour

// StartupTaskID is the ID of a startup task for one deployment. Every
// worker of the deployment computes the same ID, and asynq accepts an ID
// once, so N workers starting together enqueue the task once.
func StartupTaskID(task, deploymentID string) string { return task + "@" + deploymentID }

// DeploymentID is configured, or else derived from the running binary:
// every pod of a rollout runs the same build, and a new build is a new
// rollout. The VCS revision is used when the build recorded a clean one;
// otherwise (Docker builds have no .git) a hash of the executable.
func DeploymentID(configured string) (id string, derived bool) {
	if configured != "" {
		return configured, false
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev string
		dirty := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if rev != "" && !dirty {
			return "rev-" + rev[:min(len(rev), 12)], true
		}
	}
	if sum, err := executableHash(); err == nil {
		return "bin-" + sum[:16], true
	}
	return "unknown-build", true
}

func executableHash() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	f, err := os.Open(exe)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// enqueueStartup enqueues every startup task the gate scheduled, once per
// deployment (see StartupTaskID). deploymentID is computed only if there
// is such a task.
func enqueueStartup(ctx context.Context, log *slog.Logger, enq interface {
	EnqueueContext(ctx context.Context, t *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}, decisions []jobs.Decision, deploymentID func() (string, bool)) {
	var id string
	for _, d := range decisions {
		if !d.Scheduled || d.Spec.Kind != jobs.Startup {
			continue
		}
		if id == "" {
			var derived bool
			id, derived = deploymentID()
			log.Info("deployment identified", "deployment_id", id, "derived", derived)
		}
		payload, err := jobs.EncodePayload(d.Spec.NewPayload())
		if err != nil {
			panic(fmt.Sprintf("catalog default payload of %s is invalid: %v", d.Spec.Name, err))
		}
		taskID := StartupTaskID(d.Spec.Name, id)
		opts := []asynq.Option{
			asynq.TaskID(taskID), asynq.Queue(d.Spec.Queue), asynq.MaxRetry(d.Spec.MaxRetry),
			asynq.Timeout(d.Spec.Timeout), asynq.Retention(StartupRetention),
		}
		for attempt := 1; ; attempt++ {
			_, err = enq.EnqueueContext(ctx, asynq.NewTask(d.Spec.Name, payload), opts...)
			if err == nil || errors.Is(err, asynq.ErrTaskIDConflict) || attempt == 3 || ctx.Err() != nil {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Duration(attempt) * time.Second):
			}
		}
		switch {
		case err == nil:
			log.Info("startup task enqueued for this deployment", "task", d.Spec.Name, "task_id", taskID)
		case errors.Is(err, asynq.ErrTaskIDConflict):
			log.Info("startup task already enqueued for this deployment", "task", d.Spec.Name, "task_id", taskID)
		default:
			log.Error("startup task not enqueued; run it by hand with the enqueuer", "task", d.Spec.Name, "task_id", taskID, "error", err)
		}
	}
}
