package app

import (
	"context"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/queue/asynqcompat"
	"github.com/stargazer/stargazer-jobs/internal/queue/periodic"
)

// schedules reads the schedule state of each periodic entry and returns it
// as asynq scheduler entries, for asynqmon's Schedulers page: next is the
// next due time, prev the last occurrence the scheduler handled. A task no
// scheduler has seen yet is left out until the next publish. The options
// are those every occurrence is enqueued with (TaskID and Retention, set
// per occurrence, are left out).
func schedules(rdb redis.UniversalClient, es []periodic.Entry) func(context.Context) ([]asynqcompat.SchedulerEntry, error) {
	return func(ctx context.Context) ([]asynqcompat.SchedulerEntry, error) {
		out := make([]asynqcompat.SchedulerEntry, 0, len(es))
		for _, e := range es {
			st, found, err := periodic.ReadState(ctx, rdb, e.Name)
			if err != nil {
				return nil, err
			}
			if !found {
				continue
			}
			opts := append([]asynq.Option{asynq.Queue(e.Queue)}, e.Options...)
			if e.Unique > 0 {
				opts = append(opts, asynq.Unique(e.Unique))
			}
			out = append(out, asynqcompat.SchedulerEntry{Task: e.Name, Interval: e.Interval, Payload: e.Payload,
				Opts: opts, Next: st.Next, Prev: st.LastRun})
		}
		return out, nil
	}
}
