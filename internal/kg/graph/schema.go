package graph

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// The knowledge graph's labels and relationship type. docs/data-model.md
// ("Knowledge graph (FalkorDB)") describes their properties.
const (
	// EntityLabel: an extracted entity, identified by key (EntityKey).
	EntityLabel = "Entity"
	// EpochLabel: a period of time entities are mentioned in.
	EpochLabel = "Epoch"
	// CategoryLabel: a grouping node that hub organisation hangs entities from.
	CategoryLabel = "Category"
	// MarkLabel: a short-lived node that records that one extraction write
	// query ran (package extract), so replaying it after a crash is a
	// no-op. Marks have no relationships and are deleted after days.
	MarkLabel = "ExtractionMark"
	// RelType is the one relationship type; the semantic type of a
	// relationship is its "type" property, because FalkorDB cannot take a
	// relationship type as a parameter.
	RelType = "REL"
)

// schemaIndexes are the range indexes EnsureSchema creates. Every key
// property needs one anyway: a unique constraint requires an exact-match
// index. Indexes are deliberately few: in FalkorDB, updating a property of
// a node whose label has any index is several times more expensive.
func schemaIndexes() []string {
	return []string{
		"CREATE INDEX FOR (n:Entity) ON (n.key)",
		"CREATE INDEX FOR (n:Entity) ON (n.normalized_name)",
		"CREATE INDEX FOR (n:Epoch) ON (n.key)",
		"CREATE INDEX FOR (n:Category) ON (n.key)",
		// Every extraction write looks its mark up by key.
		"CREATE INDEX FOR (n:ExtractionMark) ON (n.key)",
	}
}

type constraint struct {
	kind, label, property string // kind is UNIQUE or MANDATORY
}

func schemaConstraints() []constraint {
	var cs []constraint
	for _, label := range []string{EntityLabel, EpochLabel, CategoryLabel} {
		cs = append(cs, constraint{"UNIQUE", label, "key"}, constraint{"MANDATORY", label, "key"})
	}
	return cs
}

// constraintPoll is how often EnsureSchema looks whether constraints have
// become operational.
const constraintPoll = 20 * time.Millisecond

// EnsureSchema creates the knowledge graph's indexes and constraints where
// they are missing, and waits until the constraints are enforced. Every
// worker calls it at startup: it is idempotent, and safe to run from
// several processes at once (losing a race to create something is success).
//
// FalkorDB builds a constraint in the background over the existing nodes;
// EnsureSchema waits for that under ctx. If existing nodes violate a
// constraint (duplicate keys), the constraint fails and EnsureSchema
// returns an error; running it again after the duplicates are merged
// retries the constraint.
func EnsureSchema(ctx context.Context, g *Graph) error {
	for _, q := range schemaIndexes() {
		if _, err := g.Query(ctx, q, nil); err != nil && !isAlreadyIndexed(err) {
			return fmt.Errorf("ensure schema: %s: %w", q, err)
		}
	}
	for _, c := range schemaConstraints() {
		_, err := g.do(ctx, "", "GRAPH.CONSTRAINT", "CREATE", g.name, c.kind, "NODE", c.label, "PROPERTIES", 1, c.property)
		if err != nil && !isAlreadyConstrained(err) {
			return fmt.Errorf("ensure schema: %s constraint on %s.%s: %w", c.kind, c.label, c.property, err)
		}
	}
	return waitForConstraints(ctx, g, schemaConstraints())
}

func isAlreadyIndexed(err error) bool {
	var gerr *Error
	return errors.As(err, &gerr) && strings.Contains(gerr.Msg, "already indexed")
}

func isAlreadyConstrained(err error) bool {
	var gerr *Error
	return errors.As(err, &gerr) && strings.Contains(gerr.Msg, "Constraint already exists")
}

// waitForConstraints polls db.constraints() until every one of want is
// OPERATIONAL, failing on FAILED.
func waitForConstraints(ctx context.Context, g *Graph, want []constraint) error {
	for {
		res, err := g.ROQuery(ctx, "CALL db.constraints() YIELD type, label, properties, status RETURN type, label, properties, status", nil)
		if err != nil {
			return fmt.Errorf("ensure schema: listing constraints: %w", err)
		}
		status := map[constraint]string{}
		for i, row := range res.Rows {
			props, _ := row[2].([]any)
			if len(props) != 1 {
				continue // not one of ours
			}
			kind, err1 := res.Text(i, "type")
			label, err2 := res.Text(i, "label")
			prop, err3 := AsString(props[0])
			st, err4 := res.Text(i, "status")
			if err := errors.Join(err1, err2, err3, err4); err != nil {
				return fmt.Errorf("ensure schema: db.constraints() row %v: %w", row, err)
			}
			status[constraint{kind, label, prop}] = st
		}
		pending := 0
		for _, c := range want {
			switch st := status[c]; st {
			case "OPERATIONAL":
			case "FAILED":
				return fmt.Errorf("ensure schema: %s constraint on %s.%s failed: existing nodes violate it (duplicate or missing %s); merge them and run again",
					c.kind, c.label, c.property, c.property)
			case "PENDING", "UNDER CONSTRUCTION": // both transient: the build is running
				pending++
			case "":
				return fmt.Errorf("ensure schema: %s constraint on %s.%s is missing from db.constraints()", c.kind, c.label, c.property)
			default:
				return fmt.Errorf("ensure schema: %s constraint on %s.%s has status %q", c.kind, c.label, c.property, st)
			}
		}
		if pending == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ensure schema: waiting for %d constraints to become operational: %w", pending, context.Cause(ctx))
		case <-time.After(constraintPoll):
		}
	}
}
