package killswitch_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/killswitch"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

type countingModel struct{ calls int }

func (c *countingModel) Chat(context.Context, llm.Request) (*llm.Response, error) {
	c.calls++
	return &llm.Response{Content: "ok"}, nil
}

func TestNoCallStartsWhileTheSwitchIsOff(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	for _, tt := range []struct {
		name    string
		enabled bool
		value   string // "" leaves the key unset
		off     bool
	}{
		{"on by default", true, "", false},
		{"off at startup", false, "", true},
		{"off at startup whatever the key says", false, "on", true},
		{"flipped off at runtime", true, "off", true},
		{"flipped off with false", true, "FALSE", true},
		{"flipped off with 0", true, "0", true},
		{"on again", true, "on", false},
		{"anything else is on", true, "yes please", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rdb.Del(ctx, killswitch.DefaultKey)
			if tt.value != "" {
				rdb.Set(ctx, killswitch.DefaultKey, tt.value, 0)
			}
			m := &countingModel{}
			g := killswitch.New(rdb, killswitch.DefaultKey, tt.enabled).Guard(m)
			_, err := g.Chat(ctx, llm.Request{})
			if tt.off != errors.Is(err, killswitch.ErrOff) || (tt.off && m.calls != 0) || (!tt.off && m.calls != 1) {
				t.Fatalf("err %v after %d calls, want off=%v", err, m.calls, tt.off)
			}
		})
	}
}

// A switch that cannot be read stops calls too: an emergency stop must not
// depend on Redis being well.
func TestAnUnreadableSwitchStartsNoCall(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	srv.Stop()
	m := &countingModel{}
	_, err := killswitch.New(rdb, killswitch.DefaultKey, true).Guard(m).Chat(context.Background(), llm.Request{})
	if err == nil || m.calls != 0 {
		t.Fatalf("err %v after %d calls", err, m.calls)
	}
}
