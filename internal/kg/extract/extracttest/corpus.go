package extracttest

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/kg/extract"
)

// Corpus is the extraction benchmarks' workload: n short chat messages over
// 40 channels, one a second from start, each naming two of 2,000 topics, so
// the graph keeps growing as it would on a real server. Messages come
// channel by channel, as the extraction tasks pass them; the same prefix
// and n give the same messages.
func Corpus(prefix string, n int, start time.Time) []extract.Fragment {
	r := rand.New(rand.NewPCG(1, 2))
	topic := func() string { return fmt.Sprintf("Topic%04d", r.IntN(2000)) }
	out := make([]extract.Fragment, n)
	for i := range out {
		src := fmt.Sprintf("discord:%d", 1000+i*40/n)
		out[i] = extract.Fragment{
			ID: fmt.Sprintf("sg:msg:%s:%s-%06d", src, prefix, i), Source: src,
			Author: fmt.Sprintf("user%03d", r.IntN(200)),
			Text:   fmt.Sprintf("has anyone tried %s with %s yet? works for me", topic(), topic()),
			Time:   start.Add(time.Duration(i) * time.Second),
		}
	}
	return out
}
