package asynqcompat

// Contract tests: what this package assumes about asynq's private Redis
// layout, checked against real asynq servers and clients of the version
// go.mod pins. Run them before adding a version to CoveredVersions.

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/testkit/faultproxy"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

func newServer(t *testing.T, addr string, h asynq.HandlerFunc) *asynq.Server {
	t.Helper()
	s := asynq.NewServer(asynq.RedisClientOpt{Addr: addr, DialTimeout: 200 * time.Millisecond}, asynq.Config{
		Concurrency: 1, Queues: map[string]int{"default": 1}, LogLevel: asynq.FatalLevel, ShutdownTimeout: time.Second,
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc("t", h)
	if err := s.Start(mux); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestContractRecoveryRequeuesATaskARealServerWasRunning(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	// Worker A reaches Redis through a proxy, so the test can cut it off
	// as if it had died, holding the task.
	proxy, err := faultproxy.Start(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	started := make(chan struct{}, 1)
	a := newServer(t, proxy.Addr(), func(ctx context.Context, _ *asynq.Task) error {
		started <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	})
	c := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr})
	defer c.Close()
	if _, err := c.Enqueue(asynq.NewTask("t", nil), asynq.TaskID("held"), asynq.Queue("default"), asynq.MaxRetry(3), asynq.Retention(time.Hour)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("worker A never took the task")
	}
	// The layout this package relies on: the running task is in the
	// queue's active list and holds a lease scored by its expiry.
	if _, err := rdb.ZScore(ctx, leaseKey("default"), "held").Result(); err != nil {
		t.Fatalf("no lease for the running task at %s: %v", leaseKey("default"), err)
	}
	if pos, err := rdb.LPos(ctx, activeKey("default"), "held", redis.LPosArgs{}).Result(); err != nil || pos < 0 {
		t.Fatalf("running task not in %s: %v", activeKey("default"), err)
	}
	if st, _ := rdb.HGet(ctx, taskKey("default", "held"), "state").Result(); st != "active" {
		t.Fatalf("task hash state %q, want active", st)
	}
	// A dies: nothing extends its lease any more; back-date it rather than
	// wait 30 s.
	proxy.SetMode(faultproxy.Drop)
	rdb.ZAdd(ctx, leaseKey("default"), redisZ(time.Now().Add(-time.Minute), "held"))
	ids, err := recoverExpired(ctx, rdb, []string{"default"}, time.Now())
	if err != nil || len(ids) != 1 || ids[0] != "held" {
		t.Fatalf("recovered %v, %v; want [held]", ids, err)
	}
	// A live worker B takes the requeued task and completes it, without a
	// retry counted.
	done := make(chan struct{}, 1)
	b := newServer(t, srv.Addr, func(context.Context, *asynq.Task) error { done <- struct{}{}; return nil })
	defer b.Shutdown()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("worker B never ran the recovered task")
	}
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	var info *asynq.TaskInfo
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if info, err = insp.GetTaskInfo("default", "held"); err == nil && info.State == asynq.TaskStateCompleted {
			break
		}
	}
	if info == nil || info.State != asynq.TaskStateCompleted || info.Retried != 0 {
		t.Errorf("recovered task: %+v, %v; want completed, not retried", info, err)
	}
	a.Shutdown()
}

func TestContractUniqueLocks(t *testing.T) {
	for _, payload := range [][]byte{nil, {}, []byte(`{"a":1}`)} {
		srv := redistest.Start(t)
		rdb := srv.Client(t)
		ctx := context.Background()
		c := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr})
		defer c.Close()
		enqueue := func() (*asynq.TaskInfo, error) {
			return c.Enqueue(asynq.NewTask("t", payload), asynq.Queue("default"), asynq.Unique(time.Hour), asynq.MaxRetry(0))
		}
		info, err := enqueue()
		if err != nil {
			t.Fatal(err)
		}
		// The lock is where UniqueKey says, holding the task's ID, and
		// UniqueKeyPattern finds it.
		if v, err := rdb.Get(ctx, UniqueKey("default", "t", payload)).Result(); err != nil || v != info.ID {
			t.Errorf("payload %q: lock at %s = %q, %v; want the task ID %s", payload, UniqueKey("default", "t", payload), v, err, info.ID)
		}
		if keys, _ := rdb.Keys(ctx, UniqueKeyPattern("default", "t")).Result(); len(keys) != 1 {
			t.Errorf("payload %q: pattern finds %v", payload, keys)
		}
		if _, err := enqueue(); !errors.Is(err, asynq.ErrDuplicateTask) {
			t.Fatalf("payload %q: second enqueue: %v, want ErrDuplicateTask", payload, err)
		}
		// A real server runs it and it fails for good: asynq archives it and
		// keeps the lock (what ReleaseUnique works around). The handler sees
		// the payload asynq gives it, which ReleaseUnique must cope with.
		got := make(chan []byte, 1)
		s := newServer(t, srv.Addr, func(_ context.Context, task *asynq.Task) error {
			got <- task.Payload()
			return errors.New("failed for good")
		})
		seen := <-got
		insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if ti, err := insp.GetTaskInfo("default", info.ID); err == nil && ti.State == asynq.TaskStateArchived {
				break
			}
		}
		insp.Close()
		s.Shutdown()
		if n, _ := rdb.Exists(ctx, UniqueKey("default", "t", payload)).Result(); n != 1 {
			t.Fatalf("payload %q: asynq released the lock of an archived task; ReleaseUnique may be unneeded now", payload)
		}
		// Another task's ID does not release it; the holder's does, and
		// the next enqueue gets in.
		if ok, err := ReleaseUnique(ctx, rdb, "default", "t", seen, "someone-else"); ok || err != nil {
			t.Errorf("payload %q: released by another ID: %v %v", payload, ok, err)
		}
		if ok, err := ReleaseUnique(ctx, rdb, "default", "t", seen, info.ID); !ok || err != nil {
			t.Errorf("payload %q: holder's release: %v %v", payload, ok, err)
		}
		if _, err := enqueue(); err != nil {
			t.Errorf("payload %q: enqueue after release: %v", payload, err)
		}
	}
}

// asynq v0.26 leaks the Unique lock when an enqueue's TaskID conflicts
// (its script takes the lock before checking the ID); the scheduler
// releases it (periodic.releaseLeakedLock) with ReleaseUnique.
func TestContractATaskIDConflictLeaksTheUniqueLockAndReleaseUniqueFreesIt(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	c := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr})
	defer c.Close()
	payload := []byte(`{}`)
	opts := []asynq.Option{asynq.Queue("default"), asynq.TaskID("occ@1"), asynq.Unique(time.Hour), asynq.Retention(time.Hour)}
	if _, err := c.Enqueue(asynq.NewTask("t", payload), opts...); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 1)
	s := newServer(t, srv.Addr, func(context.Context, *asynq.Task) error { done <- struct{}{}; return nil })
	<-done
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if ti, err := insp.GetTaskInfo("default", "occ@1"); err == nil && ti.State == asynq.TaskStateCompleted {
			break
		}
	}
	s.Shutdown()
	if n, _ := rdb.Exists(ctx, UniqueKey("default", "t", payload)).Result(); n != 0 {
		t.Fatal("lock not released on success")
	}
	// A peer scheduler enqueues the same occurrence again.
	if _, err := c.Enqueue(asynq.NewTask("t", payload), opts...); !errors.Is(err, asynq.ErrTaskIDConflict) {
		t.Fatalf("second enqueue: %v, want ErrTaskIDConflict", err)
	}
	if v, _ := rdb.Get(ctx, UniqueKey("default", "t", payload)).Result(); v != "occ@1" {
		t.Fatalf("lock after the conflict = %q; asynq no longer leaks it, and periodic.releaseLeakedLock may go", v)
	}
	if ok, err := ReleaseUnique(ctx, rdb, "default", "t", payload, "occ@1"); !ok || err != nil {
		t.Fatalf("release of the leaked lock: %v %v", ok, err)
	}
	if _, err := c.Enqueue(asynq.NewTask("t", payload), asynq.Queue("default"), asynq.Unique(time.Hour)); err != nil {
		t.Errorf("next occurrence after the release: %v", err)
	}
}

// asynq v0.26's server leaks a connection per failed SUBSCRIBE; the client
// ServerConn gives it does not.
func TestContractAFailingSubscribeLeaksNoConnectionThroughServerConn(t *testing.T) {
	tests := []struct {
		name  string
		conn  func(asynq.RedisConnOpt) asynq.RedisConnOpt
		leaks bool
	}{
		{"asynq's own client leaks", func(o asynq.RedisConnOpt) asynq.RedisConnOpt { return o }, true},
		{"ServerConn does not", ServerConn, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := redistest.Start(t, "--rename-command", "SUBSCRIBE", "")
			rdb := srv.Client(t)
			clients := func() int {
				l, _ := rdb.ClientList(context.Background()).Result()
				return strings.Count(l, "\n")
			}
			s := asynq.NewServer(tt.conn(asynq.RedisClientOpt{Addr: srv.Addr}), asynq.Config{
				Concurrency: 1, Queues: map[string]int{"default": 1}, LogLevel: asynq.FatalLevel, ShutdownTimeout: time.Second,
			})
			if err := s.Start(asynq.NewServeMux()); err != nil {
				t.Fatal(err)
			}
			defer s.Shutdown()
			time.Sleep(2 * time.Second)
			before := clients()
			time.Sleep(16 * time.Second) // three more subscribe attempts
			after := clients()
			if leaked := after - before; (leaked >= 2) != tt.leaks {
				t.Errorf("connections %d -> %d over three failed SUBSCRIBEs; leak expected: %v", before, after, tt.leaks)
			}
		})
	}
}

// With SUBSCRIBE working, a server on ServerConn still receives task
// cancelations (Inspector.CancelProcessing, the dashboard's Cancel).
func TestContractServerConnKeepsCancelationWorking(t *testing.T) {
	srv := redistest.Start(t)
	started, cancelled := make(chan struct{}, 1), make(chan struct{}, 1)
	s := asynq.NewServer(ServerConn(asynq.RedisClientOpt{Addr: srv.Addr}), asynq.Config{
		Concurrency: 1, Queues: map[string]int{"default": 1}, LogLevel: asynq.FatalLevel, ShutdownTimeout: time.Second,
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc("t", func(ctx context.Context, _ *asynq.Task) error {
		started <- struct{}{}
		select {
		case <-ctx.Done():
			cancelled <- struct{}{}
		case <-time.After(20 * time.Second):
		}
		return ctx.Err()
	})
	if err := s.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	c := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr})
	defer c.Close()
	info, err := c.Enqueue(asynq.NewTask("t", nil), asynq.Queue("default"))
	if err != nil {
		t.Fatal(err)
	}
	<-started
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	if err := insp.CancelProcessing(info.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the running task was not cancelled")
	}
}
