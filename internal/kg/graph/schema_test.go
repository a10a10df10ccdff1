package graph_test

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
)

// schemaState lists indexes and constraints as "Label.prop" strings.
func schemaState(t *testing.T, g *graph.Graph) (indexes, constraints []string) {
	t.Helper()
	ctx := context.Background()
	res, err := g.ROQuery(ctx, "CALL db.indexes() YIELD label, properties RETURN label, properties", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range res.Rows {
		for _, p := range row[1].([]any) {
			indexes = append(indexes, row[0].(string)+"."+p.(string))
		}
	}
	res, err = g.ROQuery(ctx, "CALL db.constraints() YIELD type, label, properties, status RETURN type, label, properties, status", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range res.Rows {
		props := row[2].([]any)
		constraints = append(constraints, row[0].(string)+" "+row[1].(string)+"."+props[0].(string)+" "+row[3].(string))
	}
	slices.Sort(indexes)
	slices.Sort(constraints)
	return indexes, constraints
}

func TestEnsureSchemaCreatesIndexesAndConstraints(t *testing.T) {
	g := newGraph(t)
	if err := graph.EnsureSchema(context.Background(), g); err != nil {
		t.Fatal(err)
	}
	indexes, constraints := schemaState(t, g)
	wantIndexes := []string{"Category.key", "Entity.key", "Entity.normalized_name", "Epoch.key", "ExtractionMark.key"}
	if !reflect.DeepEqual(indexes, wantIndexes) {
		t.Errorf("indexes %q, want %q", indexes, wantIndexes)
	}
	wantConstraints := []string{
		"MANDATORY Category.key OPERATIONAL", "MANDATORY Entity.key OPERATIONAL", "MANDATORY Epoch.key OPERATIONAL",
		"UNIQUE Category.key OPERATIONAL", "UNIQUE Entity.key OPERATIONAL", "UNIQUE Epoch.key OPERATIONAL",
	}
	if !reflect.DeepEqual(constraints, wantConstraints) {
		t.Errorf("constraints %q, want %q", constraints, wantConstraints)
	}
}

func TestEnsureSchemaTwiceIsFine(t *testing.T) {
	g := newGraph(t)
	ctx := context.Background()
	if err := graph.EnsureSchema(ctx, g); err != nil {
		t.Fatal(err)
	}
	falkortest.Exec(t, g, "CREATE (:Entity {key: 'k1', name: 'Alice'})", nil)
	beforeIdx, beforeCons := schemaState(t, g)
	if err := graph.EnsureSchema(ctx, g); err != nil {
		t.Fatalf("second EnsureSchema: %v", err)
	}
	afterIdx, afterCons := schemaState(t, g)
	if !reflect.DeepEqual(beforeIdx, afterIdx) || !reflect.DeepEqual(beforeCons, afterCons) {
		t.Errorf("schema changed by the second call:\n%q %q\n%q %q", beforeIdx, beforeCons, afterIdx, afterCons)
	}
	res := falkortest.Exec(t, g, "MATCH (e:Entity) RETURN count(e) AS n", nil)
	if n, _ := res.Int64(0, "n"); n != 1 {
		t.Errorf("%d entities after the second call, want the 1 created", n)
	}
}

func TestEnsureSchemaFromSeveralWorkersAtOnce(t *testing.T) {
	g, rdb := newGraphClient(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			// Each worker has its own Graph, as separate processes would.
			errs <- graph.EnsureSchema(context.Background(), graph.New(rdb, "g"))
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if idx, _ := schemaState(t, g); len(idx) != 5 {
		t.Errorf("indexes %q", idx)
	}
}

func TestSchemaConstraintsAreEnforced(t *testing.T) {
	g := newGraph(t)
	ctx := context.Background()
	if err := graph.EnsureSchema(ctx, g); err != nil {
		t.Fatal(err)
	}
	key := graph.EntityKey("Alice", "person")
	create := "CREATE (:Entity {key: $key, name: $name, normalized_name: $nn, type: 'person'})"
	params := map[string]any{"key": key, "name": "Alice", "nn": graph.NormalizeName("Alice")}
	falkortest.Exec(t, g, create, params)

	_, err := g.Query(ctx, create, params)
	if !errors.Is(err, graph.ErrConstraintViolation) {
		t.Errorf("second entity with key %s: error %v, want ErrConstraintViolation", key, err)
	}
	_, err = g.Query(ctx, "CREATE (:Entity {name: 'keyless'})", nil)
	if !errors.Is(err, graph.ErrConstraintViolation) {
		t.Errorf("entity without key: error %v, want ErrConstraintViolation", err)
	}
	_, err = g.Query(ctx, "CREATE (:Epoch {key: 'e'}), (:Epoch {key: 'e'})", nil)
	if !errors.Is(err, graph.ErrConstraintViolation) {
		t.Errorf("duplicate epoch: error %v, want ErrConstraintViolation", err)
	}
	// MERGE on the key finds the existing entity.
	res := falkortest.Exec(t, g, `MERGE (e:Entity {key: $key})
		ON CREATE SET e.mention_count = 1 ON MATCH SET e.mention_count = coalesce(e.mention_count, 0) + 1
		RETURN e.name AS name`, map[string]any{"key": key})
	if name, _ := res.Text(0, "name"); name != "Alice" || res.Stats.NodesCreated != 0 {
		t.Errorf("MERGE on the key: name %q, %d created; want the existing Alice", name, res.Stats.NodesCreated)
	}
	// The normalized_name index serves lookups by name.
	res = falkortest.Exec(t, g, "MATCH (e:Entity) WHERE e.normalized_name = $nn RETURN e.key AS key", map[string]any{"nn": graph.NormalizeName(" ALICE ")})
	if got, _ := res.Text(0, "key"); got != key {
		t.Errorf("lookup by normalized name: key %q, want %q", got, key)
	}
}

func TestEnsureSchemaReportsDuplicatesAndRetriesOnceMerged(t *testing.T) {
	g := newGraph(t)
	ctx := context.Background()
	falkortest.Exec(t, g, "CREATE (:Entity {key: 'dup', name: 'a'}), (:Entity {key: 'dup', name: 'b'})", nil)
	err := graph.EnsureSchema(ctx, g)
	if err == nil || !strings.Contains(err.Error(), "UNIQUE constraint on Entity.key failed") {
		t.Fatalf("EnsureSchema over duplicate keys: %v, want the unique constraint to fail", err)
	}
	falkortest.Exec(t, g, "MATCH (e:Entity {name: 'b'}) DELETE e", nil)
	if err := graph.EnsureSchema(ctx, g); err != nil {
		t.Fatalf("EnsureSchema after removing the duplicate: %v", err)
	}
	if _, cons := schemaState(t, g); !slices.Contains(cons, "UNIQUE Entity.key OPERATIONAL") {
		t.Errorf("constraints %q", cons)
	}
}

func TestEnsureSchemaStopsWithTheContext(t *testing.T) {
	g := newGraph(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	if err := graph.EnsureSchema(ctx, g); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("EnsureSchema with an expired context: %v, want DeadlineExceeded", err)
	}
}
