package graph

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// maxParamDepth bounds nesting of lists and maps in a parameter value, so a
// value that contains itself fails instead of recursing forever.
const maxParamDepth = 32

// withParams is the only place a query text is assembled: FalkorDB takes
// parameters as a textual header, "CYPHER k=<literal> ... <query>", and the
// query refers to them as $k. Callers' data only ever enters a query here,
// as literals encoded by appendLiteral; the query body is the caller's
// constant Cypher, never built from data.
//
// Keys are sorted so that the same parameters always give the same text.
func withParams(cypher string, params map[string]any) (string, error) {
	if len(params) == 0 {
		return cypher, nil
	}
	names := make([]string, 0, len(params))
	for name := range params {
		names = append(names, name)
	}
	slices.Sort(names)
	b := []byte("CYPHER")
	for _, name := range names {
		if !isParamName(name) {
			return "", fmt.Errorf("parameter name %q: want letters, digits and _, not starting with a digit", name)
		}
		b = append(b, ' ')
		b = append(b, name...)
		b = append(b, '=')
		var err error
		if b, err = appendLiteral(b, params[name], 0); err != nil {
			return "", fmt.Errorf("parameter %s: %w", name, err)
		}
	}
	b = append(b, ' ')
	b = append(b, cypher...)
	return string(b), nil
}

func isParamName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_', 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z':
		case '0' <= r && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// appendLiteral appends v as a Cypher literal. Supported: nil, bool,
// strings, signed and unsigned integers (up to MaxInt64), finite floats,
// slices and arrays of supported values (lists), and maps with string keys
// (maps). Named types of those kinds work too, except time.Duration, whose
// unit would be lost, and anything else (structs, pointers, time.Time) is
// an error rather than a guess: FalkorDB has no datetime, so times are
// passed as unix milliseconds explicitly.
func appendLiteral(b []byte, v any, depth int) ([]byte, error) {
	if depth > maxParamDepth {
		return b, fmt.Errorf("nested more than %d levels deep", maxParamDepth)
	}
	switch v := v.(type) {
	case nil:
		return append(b, "null"...), nil
	case string:
		return appendString(b, v)
	case bool:
		return strconv.AppendBool(b, v), nil
	case int64:
		return strconv.AppendInt(b, v, 10), nil
	case int:
		return strconv.AppendInt(b, int64(v), 10), nil
	case float64:
		return appendFloat(b, v, 64)
	case time.Duration, time.Time:
		return b, fmt.Errorf("%T is not a graph value: pass unix milliseconds (e.g. t.UnixMilli()) or a count of milliseconds", v)
	}

	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.String:
		return appendString(b, rv.String())
	case reflect.Bool:
		return strconv.AppendBool(b, rv.Bool()), nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.AppendInt(b, rv.Int(), 10), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		u := rv.Uint()
		if u > math.MaxInt64 {
			// FalkorDB would silently clamp it to MaxInt64.
			return b, fmt.Errorf("%d does not fit a graph integer (int64)", u)
		}
		return strconv.AppendUint(b, u, 10), nil
	case reflect.Float32:
		return appendFloat(b, rv.Float(), 32) // float32(0.1) as 0.1, not 0.10000000149011612
	case reflect.Float64:
		return appendFloat(b, rv.Float(), 64)
	case reflect.Slice, reflect.Array:
		if rv.Kind() == reflect.Slice && rv.Type().Elem().Kind() == reflect.Uint8 {
			return b, fmt.Errorf("%T: pass text as a string; a list of numbers as []int64", v)
		}
		b = append(b, '[')
		for i := range rv.Len() {
			if i > 0 {
				b = append(b, ", "...)
			}
			var err error
			if b, err = appendLiteral(b, rv.Index(i).Interface(), depth+1); err != nil {
				return b, fmt.Errorf("[%d]: %w", i, err)
			}
		}
		return append(b, ']'), nil
	case reflect.Map:
		if rv.Type().Key().Kind() != reflect.String {
			return b, fmt.Errorf("%T: map keys must be strings", v)
		}
		type entry struct {
			key string
			val reflect.Value
		}
		entries := make([]entry, 0, rv.Len())
		for it := rv.MapRange(); it.Next(); {
			entries = append(entries, entry{it.Key().String(), it.Value()})
		}
		slices.SortFunc(entries, func(x, y entry) int { return strings.Compare(x.key, y.key) })
		b = append(b, '{')
		for i, e := range entries {
			if i > 0 {
				b = append(b, ", "...)
			}
			// A back-quoted key can hold any character but the back-quote
			// itself: FalkorDB's parser rejects the usual `` escape.
			if strings.ContainsAny(e.key, "`\x00") {
				return b, fmt.Errorf("map key %q: back-quotes and NUL cannot be encoded", e.key)
			}
			b = append(b, '`')
			b = append(b, e.key...)
			b = append(b, "`: "...)
			var err error
			if b, err = appendLiteral(b, e.val.Interface(), depth+1); err != nil {
				return b, fmt.Errorf("[%q]: %w", e.key, err)
			}
		}
		return append(b, '}'), nil
	}
	return b, fmt.Errorf("%T is not a supported graph parameter type", v)
}

// appendString writes a double-quoted Cypher string. FalkorDB's lexer
// interprets backslash escapes (\n, \", \\ ...) inside quotes, so exactly
// two characters need escaping: the backslash and the double quote. All
// other bytes, newlines and non-ASCII included, are sent raw (the Redis
// protocol is binary-safe). NUL cannot be sent: the server reads the query
// as a C string and would cut it there.
func appendString(b []byte, s string) ([]byte, error) {
	if strings.IndexByte(s, 0) >= 0 {
		return b, fmt.Errorf("string contains a NUL byte, which FalkorDB cannot take")
	}
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\', '"':
			b = append(b, '\\', c)
		default:
			b = append(b, c)
		}
	}
	return append(b, '"'), nil
}

// appendFloat writes f so that Cypher reads it as a float: shortest
// round-trip digits, with ".0" added to integral values (1 would be an
// integer literal).
func appendFloat(b []byte, f float64, bitSize int) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return b, fmt.Errorf("%v has no Cypher literal", f)
	}
	start := len(b)
	b = strconv.AppendFloat(b, f, 'g', -1, bitSize)
	if !slices.ContainsFunc(b[start:], func(c byte) bool { return c == '.' || c == 'e' }) {
		b = append(b, ".0"...)
	}
	return b, nil
}
