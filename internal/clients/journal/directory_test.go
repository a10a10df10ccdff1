package journal_test

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/journal"
	"github.com/stargazer/stargazer-jobs/internal/testkit/journaltest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// The real journalctl on a real journal file in a directory of its own
// (JOURNAL_DIR): the stream publishes the unit's entries and reports each
// one's log time; Read reads them.
func TestStreamAndReadARealJournalDirectory(t *testing.T) {
	dir := t.TempDir()
	at := time.Now().Add(-time.Minute).Truncate(time.Microsecond)
	journaltest.Write(t, filepath.Join(dir, "system.journal"), thisMachine, []journaltest.Entry{
		{Unit: "stargazer.service", Message: "first", Priority: 6, Time: at},
		{Unit: "other.service", Message: "not ours", Priority: 6, Time: at.Add(time.Second)},
		{Unit: "stargazer.service", Message: "second", Priority: 3, Time: at.Add(2 * time.Second)},
	})
	rdb := redistest.Start(t).Client(t)
	sub := rdb.Subscribe(context.Background(), journal.Channel)
	defer sub.Close()
	if _, err := sub.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []time.Time
	s := &journal.Streamer{Redis: rdb, Unit: "stargazer", Channel: journal.Channel, Directory: dir, StopGrace: time.Second,
		OnEntry: func(at time.Time) { mu.Lock(); seen = append(seen, at); mu.Unlock() }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := s.Run(ctx); done <- err }()
	for _, want := range []string{"first", "second"} {
		select {
		case m := <-sub.Channel():
			if !strings.Contains(m.Payload, `"MESSAGE":"`+want+`"`) {
				t.Errorf("published %.200s, want %q", m.Payload, want)
			}
		case err := <-done:
			t.Fatalf("journalctl ended before publishing %q: %v", want, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("%q not published", want)
		}
	}
	cancel()
	<-done
	mu.Lock()
	if len(seen) != 2 || !seen[0].Equal(at) || !seen[1].Equal(at.Add(2*time.Second)) {
		t.Errorf("entry times %v, want %v and 2 s later", seen, at)
	}
	mu.Unlock()

	b, err := journal.Read(context.Background(), journal.ReadOptions{Unit: "stargazer", Directory: dir, Since: at.Add(-time.Hour)})
	if err != nil || len(b.Entries) != 2 || b.Entries[1].Message != "second" || b.Entries[1].Priority != 3 {
		t.Errorf("Read = %+v, %v; want the unit's two entries", b, err)
	}
}

// journalctl's own reason reaches the error when it gives up.
func TestStreamErrorCarriesWhatJournalctlSaid(t *testing.T) {
	journaltest.Require(t)
	s := &journal.Streamer{Redis: redistest.Start(t).Client(t), Unit: "stargazer", Channel: journal.Channel,
		Directory: filepath.Join(t.TempDir(), "missing")}
	_, err := s.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "No such file or directory") {
		t.Errorf("Run = %v, want journalctl's message", err)
	}
}
