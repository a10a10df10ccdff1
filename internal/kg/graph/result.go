package graph

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Result is a query's decoded reply. Rows[i][j] is the value of
// Columns[j] in the i-th row, one of: nil (null), string, int64, bool,
// float64, []any (list), map[string]any (map), Node, Edge, Path, Point,
// []float32 (vecf32). A query without RETURN has no columns and no rows,
// only Stats.
type Result struct {
	Columns []string
	Rows    [][]any
	Stats   Stats
}

// Stats are the query statistics the server reports. Counts the server
// left out (nothing of that kind happened) are zero.
type Stats struct {
	LabelsAdded          int64
	LabelsRemoved        int64
	NodesCreated         int64
	NodesDeleted         int64
	RelationshipsCreated int64
	RelationshipsDeleted int64
	PropertiesSet        int64
	PropertiesRemoved    int64
	IndicesCreated       int64
	IndicesDeleted       int64
	// CachedExecution: the server reused a cached plan for this query text.
	CachedExecution bool
	// ExecutionTime is "Query internal execution time": the time spent
	// executing on the server, without queueing and network.
	ExecutionTime time.Duration
	// Raw holds every statistic by the server's name, value unparsed
	// ("Nodes created" -> "3"), including ones not above.
	Raw map[string]string
}

// counter returns the field of s that counts the statistic name, or nil.
func (s *Stats) counter(name string) *int64 {
	switch name {
	case "Labels added":
		return &s.LabelsAdded
	case "Labels removed":
		return &s.LabelsRemoved
	case "Nodes created":
		return &s.NodesCreated
	case "Nodes deleted":
		return &s.NodesDeleted
	case "Relationships created":
		return &s.RelationshipsCreated
	case "Relationships deleted":
		return &s.RelationshipsDeleted
	case "Properties set":
		return &s.PropertiesSet
	case "Properties removed":
		return &s.PropertiesRemoved
	case "Indices created":
		return &s.IndicesCreated
	case "Indices deleted":
		return &s.IndicesDeleted
	}
	return nil
}

// decodeStats parses lines such as "Nodes created: 3" and
// "Query internal execution time: 0.75 milliseconds".
func decodeStats(v any) (Stats, error) {
	lines, ok := v.([]any)
	if !ok {
		return Stats{}, fmt.Errorf("statistics %T is not an array", v)
	}
	s := Stats{Raw: make(map[string]string, len(lines))}
	for _, l := range lines {
		line, ok := l.(string)
		if !ok {
			return Stats{}, fmt.Errorf("statistic %T is not a string", l)
		}
		name, val, ok := strings.Cut(line, ": ")
		if !ok {
			return Stats{}, fmt.Errorf("statistic %q", line)
		}
		s.Raw[name] = val
		switch name {
		case "Cached execution":
			s.CachedExecution = val == "1"
		case "Query internal execution time":
			ms, err := strconv.ParseFloat(strings.TrimSuffix(val, " milliseconds"), 64)
			if err != nil {
				return Stats{}, fmt.Errorf("statistic %q: %w", line, err)
			}
			s.ExecutionTime = time.Duration(ms * float64(time.Millisecond))
		default:
			if field := s.counter(name); field != nil {
				n, err := strconv.ParseInt(val, 10, 64)
				if err != nil {
					return Stats{}, fmt.Errorf("statistic %q: %w", line, err)
				}
				*field = n
			}
		}
	}
	return s, nil
}

// Value returns the value of column in row, or an error naming what is
// missing.
func (r *Result) Value(row int, column string) (any, error) {
	if row < 0 || row >= len(r.Rows) {
		return nil, fmt.Errorf("row %d of %d", row, len(r.Rows))
	}
	for i, c := range r.Columns {
		if c == column {
			return r.Rows[row][i], nil
		}
	}
	return nil, fmt.Errorf("no column %q in %q", column, r.Columns)
}

// Int64 returns an integer column of a row, e.g. the count of
// "RETURN count(n) AS n".
func (r *Result) Int64(row int, column string) (int64, error) {
	v, err := r.Value(row, column)
	if err != nil {
		return 0, err
	}
	return AsInt64(v)
}

// Float64 returns a numeric column of a row; integers are converted.
func (r *Result) Float64(row int, column string) (float64, error) {
	v, err := r.Value(row, column)
	if err != nil {
		return 0, err
	}
	return AsFloat64(v)
}

// Text returns a string column of a row.
func (r *Result) Text(row int, column string) (string, error) {
	v, err := r.Value(row, column)
	if err != nil {
		return "", err
	}
	return AsString(v)
}

// AsInt64 converts a decoded integer value. Floats are refused rather than
// truncated, and null is an error: use the value directly where null is
// expected.
func AsInt64(v any) (int64, error) {
	if i, ok := v.(int64); ok {
		return i, nil
	}
	return 0, fmt.Errorf("value %v (%T) is not an integer", v, v)
}

// AsFloat64 converts a decoded float or integer value (Cypher arithmetic
// on integers stays integral, so a float column may hold either).
func AsFloat64(v any) (float64, error) {
	switch v := v.(type) {
	case float64:
		return v, nil
	case int64:
		return float64(v), nil
	}
	return 0, fmt.Errorf("value %v (%T) is not a number", v, v)
}

// AsString converts a decoded string value.
func AsString(v any) (string, error) {
	if s, ok := v.(string); ok {
		return s, nil
	}
	return "", fmt.Errorf("value %v (%T) is not a string", v, v)
}

// AsBool converts a decoded boolean value.
func AsBool(v any) (bool, error) {
	if b, ok := v.(bool); ok {
		return b, nil
	}
	return false, fmt.Errorf("value %v (%T) is not a boolean", v, v)
}

// Scan copies the columns of one row into dest, by column name: each value
// of dest points to an int64, float64 (an integer converts), string, bool,
// []any, map[string]any, Node or any. A null leaves the destination as it
// is; a missing column or a value of another type is an error naming the
// column, so an unexpected row shape is reported instead of read as zero.
func (r *Result) Scan(row int, dest map[string]any) error {
	for column, d := range dest {
		v, err := r.Value(row, column)
		if err != nil {
			return err
		}
		if v == nil {
			continue
		}
		ok := true
		switch d := d.(type) {
		case *int64:
			*d, ok = v.(int64)
		case *float64:
			f, err := AsFloat64(v)
			*d, ok = f, err == nil
		case *string:
			*d, ok = v.(string)
		case *bool:
			*d, ok = v.(bool)
		case *[]any:
			*d, ok = v.([]any)
		case *map[string]any:
			*d, ok = v.(map[string]any)
		case *Node:
			*d, ok = v.(Node)
		case *any:
			*d = v
		default:
			return fmt.Errorf("column %q: cannot scan into %T", column, d)
		}
		if !ok {
			return fmt.Errorf("column %q: value %v (%T) does not fit %T", column, v, v, d)
		}
	}
	return nil
}
