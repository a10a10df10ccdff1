package asynqcompat

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// deadWorkerTask leaves a task as a SIGKILLed worker leaves it: active, with
// a lease that expired at leaseExpiry and that nobody extends.
func deadWorkerTask(t *testing.T, srv *redistest.Server, id string, leaseExpiry time.Time) {
	t.Helper()
	ctx := context.Background()
	c := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr})
	defer c.Close()
	if _, err := c.Enqueue(asynq.NewTask("t", nil), asynq.TaskID(id), asynq.Queue("default")); err != nil {
		t.Fatal(err)
	}
	rdb := srv.Client(t)
	p := "asynq:{default}:"
	if err := rdb.LRem(ctx, p+"pending", 0, id).Err(); err != nil {
		t.Fatal(err)
	}
	rdb.LPush(ctx, p+"active", id)
	rdb.ZAdd(ctx, p+"lease", redisZ(leaseExpiry, id))
	rdb.HSet(ctx, p+"t:"+id, "state", "active")
}

func TestRecovererRequeuesOnlyLeasesExpiredPastTheMargin(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	now := time.Now()
	deadWorkerTask(t, srv, "dead", now.Add(-RecoverMargin-2*time.Second))
	deadWorkerTask(t, srv, "just-expired", now.Add(-time.Second))
	deadWorkerTask(t, srv, "alive", now.Add(25*time.Second))

	ids, err := recoverExpired(context.Background(), rdb, []string{"default", "critical"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids, []string{"dead"}) {
		t.Fatalf("recovered %v, want [dead]", ids)
	}
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	info, err := insp.GetTaskInfo("default", "dead")
	if err != nil || info.State != asynq.TaskStatePending || info.Retried != 0 {
		t.Fatalf("dead task: %+v %v", info, err)
	}
	for _, id := range []string{"just-expired", "alive"} {
		if info, _ := insp.GetTaskInfo("default", id); info.State != asynq.TaskStateActive {
			t.Errorf("%s: state %v, want active", id, info.State)
		}
	}

	// A recovered task is processed by a live worker.
	done := make(chan string, 1)
	s := asynq.NewServer(asynq.RedisClientOpt{Addr: srv.Addr}, asynq.Config{Concurrency: 1, Queues: map[string]int{"default": 1}, LogLevel: asynq.FatalLevel})
	mux := asynq.NewServeMux()
	mux.HandleFunc("t", func(ctx context.Context, _ *asynq.Task) error {
		id, _ := asynq.GetTaskID(ctx)
		done <- id
		return nil
	})
	if err := s.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	select {
	case id := <-done:
		if id != "dead" {
			t.Fatalf("processed %s", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("recovered task not processed")
	}
}

func TestRecovererGivesUpOnATaskThatKeepsKillingItsWorker(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	now := time.Now()
	deadWorkerTask(t, srv, "poison", now.Add(-time.Minute))
	for i := range maxFastRecoveries + 1 {
		ids, err := recoverExpired(ctx, rdb, []string{"default"}, now)
		if err != nil {
			t.Fatal(err)
		}
		if want := i < maxFastRecoveries; (len(ids) == 1) != want {
			t.Fatalf("round %d: recovered %v, want recovery %v", i, ids, want)
		}
		// The task kills its next worker too.
		p := "asynq:{default}:"
		if err := rdb.LRem(ctx, p+"pending", 0, "poison").Err(); err != nil {
			t.Fatal(err)
		}
		rdb.LPush(ctx, p+"active", "poison")
		rdb.ZAdd(ctx, p+"lease", redisZ(now.Add(-time.Minute), "poison"))
	}
	if n, _ := rdb.Get(ctx, recoveredPrefix+"default:poison").Int(); n != maxFastRecoveries+1 {
		t.Fatalf("recovery count %d", n)
	}
}

func redisZ(t time.Time, id string) redis.Z {
	return redis.Z{Score: float64(t.Unix()), Member: id}
}

func TestOnePodOfTheFleetTakesEachTurn(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	if !takeTurn(ctx, rdb, recoverTurnKey, time.Minute) {
		t.Fatal("the first pod did not get the turn")
	}
	if takeTurn(ctx, rdb, recoverTurnKey, time.Minute) {
		t.Fatal("a peer got the turn while it was taken")
	}
	rdb.Del(ctx, recoverTurnKey) // the turn lapses
	if !takeTurn(ctx, rdb, recoverTurnKey, time.Minute) {
		t.Fatal("no pod got the turn after it lapsed")
	}
}
