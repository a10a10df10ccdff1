package extract_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/extract"
	"github.com/stargazer/stargazer-jobs/internal/redistest"
)

func TestWithWriteLockHoldsTheEnginesLockAndSerialisesWriters(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	var mu sync.Mutex
	inside, most := 0, 0
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := extract.WithWriteLock(ctx, rdb, func(ctx context.Context) error {
				if n, err := rdb.Exists(ctx, extract.WriteLockKey).Result(); err != nil || n != 1 {
					t.Errorf("lock key exists=%d err=%v while fn runs", n, err)
				}
				mu.Lock()
				inside++
				most = max(most, inside)
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
				mu.Lock()
				inside--
				mu.Unlock()
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if most != 1 {
		t.Errorf("%d writers held the lock at once", most)
	}
	boom := errors.New("boom")
	if err := extract.WithWriteLock(ctx, rdb, func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("err = %v, want fn's", err)
	}
	if n, _ := rdb.Exists(ctx, extract.WriteLockKey).Result(); n != 0 {
		t.Error("the lock outlived fn")
	}
}
