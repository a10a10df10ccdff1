package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/cursors"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract"
	"github.com/stargazer/stargazer-jobs/internal/store/ragstore"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// Bounds of one anamnesis_digest run.
const (
	// AnamnesisCursorKey holds the index of the next fragment of the RAG
	// fragment store to digest.
	AnamnesisCursorKey = cursors.AnamnesisKey
	// anamnesisPerRun: fragments read per run (every 20 min). Lore
	// fragments are long (up to 2,000 characters in the prompt), so this
	// is about 15 LLM calls, well within the 15-minute timeout.
	anamnesisPerRun = 60
	// anamnesisChunk: fragments handed to the engine between cursor moves.
	anamnesisChunk = 15
)

// anamnesisDigest folds the next fragments of the Spiral Goddess RAG corpus
// into the knowledge graph, advancing a cursor through the store, so the
// curated lore is absorbed into long-term memory a little at a time.
//
// The cursor is the index of the next fragment; it moves, by
// compare-and-set, only over fragments the engine has settled, so a failed
// or cut-short run resumes where it stopped, and the extraction ledger
// makes re-reading a settled fragment free. At the end of the corpus the
// cursor stays there and the next runs pick up fragments appended since.
// It does not wrap around: every fragment is already in the graph, and
// once the ledger has forgotten it (30 days) a second pass would count its
// mentions twice.
//
// Its first position: with a Python side (HandOver set, the default), a
// missing cursor starts at the end of the store, so the first run after a
// cut-over digests nothing the Python side already paid for (and counted in
// the graph) and later runs digest what is appended; `enqueuer cursors set
// anamnesis_digest fragments N` starts it elsewhere. With no Python side it
// starts at the first fragment.
type anamnesisDigest struct {
	engine   extract.Config
	store    *ragstore.Store
	handOver bool
	log      *slog.Logger
}

func newAnamnesisDigest(k kit) Worker[*jobs.Empty] {
	return &anamnesisDigest{engine: k.extraction(), store: ragstore.New(k.Redis()).WithCursors(k.Jobs()), handOver: k.HandOver != nil, log: k.Logger}
}

func (h *anamnesisDigest) Work(ctx context.Context, _ *jobs.Empty) (Result, error) {
	const task = jobs.AnamnesisDigest
	eng, err := extract.New(h.engine)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", task, err, asynq.SkipRetry)
	}
	dg := digest{store: h.store, eng: eng}
	if h.handOver {
		cursor, started, err := h.store.StartAtEnd(ctx, AnamnesisCursorKey)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", task, err)
		}
		if started {
			h.log.InfoContext(ctx, "anamnesis cursor absent: starting at the end of the fragment store, after what the Python side digested",
				"task", task, "cursor", cursor, "hint", "enqueuer cursors set anamnesis_digest fragments 0 digests the whole store")
		}
	}
	if err := dg.read(ctx, h.log); err != nil {
		return nil, fmt.Errorf("%s: %w", task, err)
	}
	err = dg.run(ctx)
	if total := dg.c.EntitiesAdded + dg.c.RelationshipsAdded; total > 0 {
		h.log.InfoContext(ctx, fmt.Sprintf("Anamnesis digest: +%d entities/rels (cursor %d/%d, %.1f%%)",
			total, dg.cursor, dg.total, dg.progress()), "task", task, "fragments", dg.c.Fragments)
	}
	if err != nil {
		h.log.WarnContext(ctx, "Anamnesis digest failed", "task", task, "error", err,
			"cursor", dg.cursor, "fragments_extracted", dg.c.Fragments)
		return nil, extractionFailure(fmt.Errorf("%s: %w", task, err))
	}
	return dg.result(), nil
}

// digest is one anamnesis_digest run.
type digest struct {
	store *ragstore.Store
	eng   *extract.Engine
	// cursor is the stored cursor, total the corpus size read at the start.
	cursor, total int64
	fragments     int
	c             extract.Counts
	lost          bool // another run moved the cursor
}

func (g *digest) read(ctx context.Context, log *slog.Logger) error {
	var err error
	if g.cursor, err = g.store.Cursor(ctx, AnamnesisCursorKey); err != nil {
		return err
	}
	if g.total, err = g.store.Len(ctx); err != nil {
		return err
	}
	if g.cursor > g.total || g.cursor < 0 {
		// The store was rebuilt shorter: start over. The ledger skips what
		// was already digested without asking the LLM.
		log.WarnContext(ctx, "anamnesis cursor is past the end of the fragment store; starting over",
			"task", jobs.AnamnesisDigest, "cursor", g.cursor, "total", g.total)
		moved, err := g.store.MoveCursor(ctx, AnamnesisCursorKey, g.cursor, 0)
		if err != nil {
			return err
		}
		if !moved {
			return errors.New("the cursor was moved by another run")
		}
		g.cursor = 0
	}
	return nil
}

func (g *digest) run(ctx context.Context) error {
	frags, err := g.store.Range(ctx, g.cursor, anamnesisPerRun)
	if err != nil {
		return err
	}
	g.fragments = len(frags)
	for lo := 0; lo < len(frags); lo += anamnesisChunk {
		hi := min(lo+anamnesisChunk, len(frags))
		chunk := make([]extract.Fragment, 0, hi-lo)
		for _, f := range frags[lo:hi] {
			chunk = append(chunk, LoreFragment(f))
		}
		res, err := g.eng.Extract(ctx, chunk)
		g.c.Add(res.Counts)
		settled := 0
		for settled < len(res.Settled) && res.Settled[settled] {
			settled++
		}
		moveErr := g.move(ctx, frags[lo].Index+int64(settled))
		if err != nil || moveErr != nil {
			return errors.Join(err, moveErr)
		}
		if settled < len(chunk) || g.lost {
			return nil // another run holds a fragment (or moved the cursor): the next run goes on
		}
	}
	return nil
}

// move sets the cursor to to, if it is further and no one else moved it.
func (g *digest) move(ctx context.Context, to int64) error {
	if to <= g.cursor || g.lost {
		return nil
	}
	moved, err := g.store.MoveCursor(ctx, AnamnesisCursorKey, g.cursor, to)
	if err != nil {
		return err
	}
	if !moved {
		g.lost = true
		return nil
	}
	g.cursor = to
	return nil
}

// LoreFragment is a store fragment as the engine takes it: its hash key is
// its ledger ID, its title leads the text. The chaos check's reference
// extraction reads the store through it too, so it extracts what the task
// does.
func LoreFragment(f ragstore.Fragment) extract.Fragment {
	text := f.Text
	if f.Title != "" && text != "" {
		text = f.Title + ": " + text
	}
	source := "anamnesis"
	if f.Source != "" {
		source += " · " + f.Source
	}
	return extract.Fragment{ID: f.Key(), Source: source, Text: text, Time: f.Created}
}

func (g *digest) progress() float64 {
	if g.total == 0 {
		return 0
	}
	return 100 * float64(g.cursor) / float64(g.total)
}

// result is the run's Result. cursor, total_store and progress_pct are
// levels, not counts: as json.Numbers they are shown but not added up into
// stargazer_task_items_total.
func (g *digest) result() Result {
	c := g.c
	return withCounts(c, Result{
		"fragments_read": g.fragments, "fragments_extracted": c.Fragments,
		"cursor":       json.Number(strconv.FormatInt(g.cursor, 10)),
		"total_store":  json.Number(strconv.FormatInt(g.total, 10)),
		"progress_pct": json.Number(strconv.FormatFloat(g.progress(), 'f', 1, 64)),
	})
}
