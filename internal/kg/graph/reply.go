package graph

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Node is a graph node as returned by a query. ID is FalkorDB's internal
// id: valid within one query's result, but reused after deletes, so it must
// never be stored; identify entities by their key property.
type Node struct {
	ID         int64
	Labels     []string
	Properties map[string]any
}

// Edge is a relationship as returned by a query. Its IDs, like Node.ID,
// are internal and reused after deletes.
type Edge struct {
	ID         int64
	Type       string
	Src, Dst   int64 // internal ids of the source and destination nodes
	Properties map[string]any
}

// Path is a path value: Nodes[i] and Nodes[i+1] are joined by Edges[i].
type Path struct {
	Nodes []Node
	Edges []Edge
}

// Point is a geographic point value.
type Point struct {
	Latitude, Longitude float64
}

// Value types of the compact reply format (FalkorDB's client spec).
const (
	valueUnknown = iota
	valueNull
	valueString
	valueInteger
	valueBoolean
	valueDouble
	valueArray
	valueEdge
	valueNode
	valuePath
	valueMap
	valuePoint
	valueVectorF32
)

// decodeReply decodes a --compact reply: [header, rows, stats] for a query
// that returns something, else [stats]. Decoded values are nil, string,
// int64, bool, float64, []any, map[string]any, Node, Edge, Path, Point and
// []float32 (vectors).
func (g *Graph) decodeReply(ctx context.Context, reply any) (*Result, error) {
	parts, ok := reply.([]any)
	if !ok || len(parts) == 0 {
		return nil, fmt.Errorf("reply %T is not a non-empty array", reply)
	}
	// A run-time error may come as the reply's last element instead of as
	// the command's error.
	if err, ok := parts[len(parts)-1].(error); ok {
		return nil, &Error{Graph: g.name, Msg: err.Error()}
	}
	res := &Result{}
	stats, err := decodeStats(parts[len(parts)-1])
	if err != nil {
		return nil, err
	}
	res.Stats = stats
	switch len(parts) {
	case 1:
		return res, nil
	case 3:
	default:
		return nil, fmt.Errorf("reply has %d parts, want 1 or 3", len(parts))
	}

	header, ok := parts[0].([]any)
	if !ok {
		return nil, fmt.Errorf("header %T is not an array", parts[0])
	}
	res.Columns = make([]string, len(header))
	for i, h := range header {
		// [column type, name]
		col, ok := h.([]any)
		if !ok || len(col) != 2 {
			return nil, fmt.Errorf("header column %v", h)
		}
		if res.Columns[i], ok = col[1].(string); !ok {
			return nil, fmt.Errorf("header column name %T", col[1])
		}
	}

	rows, ok := parts[1].([]any)
	if !ok {
		return nil, fmt.Errorf("rows %T is not an array", parts[1])
	}
	res.Rows = make([][]any, len(rows))
	for i, r := range rows {
		cells, ok := r.([]any)
		if !ok || len(cells) != len(res.Columns) {
			return nil, fmt.Errorf("row %d: %v does not match %d columns", i, r, len(res.Columns))
		}
		row := make([]any, len(cells))
		for j, cell := range cells {
			if row[j], err = g.decodeCell(ctx, cell); err != nil {
				return nil, fmt.Errorf("row %d, column %s: %w", i, res.Columns[j], err)
			}
		}
		res.Rows[i] = row
	}
	return res, nil
}

// decodeCell decodes a [type, value] pair.
func (g *Graph) decodeCell(ctx context.Context, cell any) (any, error) {
	pair, ok := cell.([]any)
	if !ok || len(pair) != 2 {
		return nil, fmt.Errorf("value %v is not a [type, value] pair", cell)
	}
	t, ok := pair[0].(int64)
	if !ok {
		return nil, fmt.Errorf("value type %T", pair[0])
	}
	return g.decodeValue(ctx, t, pair[1])
}

func (g *Graph) decodeValue(ctx context.Context, t int64, v any) (any, error) {
	switch t {
	case valueNull:
		return nil, nil
	case valueString:
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("string value %T", v)
		}
		return s, nil
	case valueInteger:
		i, ok := v.(int64)
		if !ok {
			return nil, fmt.Errorf("integer value %T", v)
		}
		return i, nil
	case valueBoolean:
		switch v {
		case "true", true:
			return true, nil
		case "false", false:
			return false, nil
		}
		return nil, fmt.Errorf("boolean value %v", v)
	case valueDouble:
		return parseDouble(v)
	case valueArray:
		items, ok := v.([]any)
		if !ok {
			return nil, fmt.Errorf("array value %T", v)
		}
		out := make([]any, len(items))
		for i, item := range items {
			var err error
			if out[i], err = g.decodeCell(ctx, item); err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
		}
		return out, nil
	case valueNode:
		return g.decodeNode(ctx, v)
	case valueEdge:
		return g.decodeEdge(ctx, v)
	case valuePath:
		return g.decodePath(ctx, v)
	case valueMap:
		flat, ok := v.([]any)
		if !ok || len(flat)%2 != 0 {
			return nil, fmt.Errorf("map value %v", v)
		}
		m := make(map[string]any, len(flat)/2)
		for i := 0; i < len(flat); i += 2 {
			k, ok := flat[i].(string)
			if !ok {
				return nil, fmt.Errorf("map key %T", flat[i])
			}
			val, err := g.decodeCell(ctx, flat[i+1])
			if err != nil {
				return nil, fmt.Errorf("[%q]: %w", k, err)
			}
			m[k] = val
		}
		return m, nil
	case valuePoint:
		ll, ok := v.([]any)
		if !ok || len(ll) != 2 {
			return nil, fmt.Errorf("point value %v", v)
		}
		lat, err := parseDouble(ll[0])
		if err != nil {
			return nil, err
		}
		lon, err := parseDouble(ll[1])
		if err != nil {
			return nil, err
		}
		return Point{Latitude: lat, Longitude: lon}, nil
	case valueVectorF32:
		items, ok := v.([]any)
		if !ok {
			return nil, fmt.Errorf("vector value %T", v)
		}
		vec := make([]float32, len(items))
		for i, item := range items {
			f, err := parseDouble(item)
			if err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
			vec[i] = float32(f)
		}
		return vec, nil
	}
	return nil, fmt.Errorf("unknown value type %d", t)
}

// parseDouble reads a double: a RESP3 double, or (always in RESP2, and in
// compact cells under both) a string such as "2.5", "1e+300" or "inf". The
// server prints doubles with 15 significant digits, so a float read back can
// differ from the one written in the last digits.
func parseDouble(v any) (float64, error) {
	switch v := v.(type) {
	case float64:
		return v, nil
	case int64:
		return float64(v), nil
	case string:
		switch strings.ToLower(v) {
		case "inf", "+inf", "infinity":
			return math.Inf(1), nil
		case "-inf", "-infinity":
			return math.Inf(-1), nil
		case "nan", "-nan":
			return math.NaN(), nil
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, fmt.Errorf("double value %q: %w", v, err)
		}
		return f, nil
	}
	return 0, fmt.Errorf("double value %T", v)
}

// decodeNode decodes [id, [label ids], [[key id, type, value], ...]].
func (g *Graph) decodeNode(ctx context.Context, v any) (Node, error) {
	parts, ok := v.([]any)
	if !ok || len(parts) != 3 {
		return Node{}, fmt.Errorf("node value %v", v)
	}
	id, ok := parts[0].(int64)
	if !ok {
		return Node{}, fmt.Errorf("node id %T", parts[0])
	}
	labelIDs, ok := parts[1].([]any)
	if !ok {
		return Node{}, fmt.Errorf("node labels %T", parts[1])
	}
	n := Node{ID: id, Labels: make([]string, len(labelIDs))}
	for i, l := range labelIDs {
		lid, ok := l.(int64)
		if !ok {
			return Node{}, fmt.Errorf("label id %T", l)
		}
		var err error
		if n.Labels[i], err = g.schemaName(ctx, labelNames, lid); err != nil {
			return Node{}, err
		}
	}
	props, err := g.decodeProperties(ctx, parts[2])
	if err != nil {
		return Node{}, err
	}
	n.Properties = props
	return n, nil
}

// decodeEdge decodes [id, type id, src id, dst id, [[key id, type, value], ...]].
func (g *Graph) decodeEdge(ctx context.Context, v any) (Edge, error) {
	parts, ok := v.([]any)
	if !ok || len(parts) != 5 {
		return Edge{}, fmt.Errorf("edge value %v", v)
	}
	var ids [4]int64
	for i := range ids {
		if ids[i], ok = parts[i].(int64); !ok {
			return Edge{}, fmt.Errorf("edge field %d: %T", i, parts[i])
		}
	}
	typ, err := g.schemaName(ctx, relTypeNames, ids[1])
	if err != nil {
		return Edge{}, err
	}
	props, err := g.decodeProperties(ctx, parts[4])
	if err != nil {
		return Edge{}, err
	}
	return Edge{ID: ids[0], Type: typ, Src: ids[2], Dst: ids[3], Properties: props}, nil
}

func (g *Graph) decodeProperties(ctx context.Context, v any) (map[string]any, error) {
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("properties %T", v)
	}
	props := make(map[string]any, len(list))
	for _, p := range list {
		triple, ok := p.([]any)
		if !ok || len(triple) != 3 {
			return nil, fmt.Errorf("property %v", p)
		}
		kid, ok := triple[0].(int64)
		if !ok {
			return nil, fmt.Errorf("property key id %T", triple[0])
		}
		t, ok := triple[1].(int64)
		if !ok {
			return nil, fmt.Errorf("property type %T", triple[1])
		}
		key, err := g.schemaName(ctx, propKeyNames, kid)
		if err != nil {
			return nil, err
		}
		if props[key], err = g.decodeValue(ctx, t, triple[2]); err != nil {
			return nil, fmt.Errorf("property %s: %w", key, err)
		}
	}
	return props, nil
}

// decodePath decodes [[array of nodes cell], [array of edges cell]].
func (g *Graph) decodePath(ctx context.Context, v any) (Path, error) {
	parts, ok := v.([]any)
	if !ok || len(parts) != 2 {
		return Path{}, fmt.Errorf("path value %v", v)
	}
	nodes, err := g.decodeCell(ctx, parts[0])
	if err != nil {
		return Path{}, fmt.Errorf("path nodes: %w", err)
	}
	edges, err := g.decodeCell(ctx, parts[1])
	if err != nil {
		return Path{}, fmt.Errorf("path edges: %w", err)
	}
	nodeList, ok1 := nodes.([]any)
	edgeList, ok2 := edges.([]any)
	if !ok1 || !ok2 {
		return Path{}, fmt.Errorf("path value %v", v)
	}
	var p Path
	for _, n := range nodeList {
		node, ok := n.(Node)
		if !ok {
			return Path{}, fmt.Errorf("path node %T", n)
		}
		p.Nodes = append(p.Nodes, node)
	}
	for _, e := range edgeList {
		edge, ok := e.(Edge)
		if !ok {
			return Path{}, fmt.Errorf("path edge %T", e)
		}
		p.Edges = append(p.Edges, edge)
	}
	return p, nil
}
