package graph

import (
	"math"
	"strings"
	"testing"
	"time"
)

type weight float64

func TestParamsAreEncodedAsCypherLiterals(t *testing.T) {
	tests := []struct {
		name  string
		value any
		want  string
	}{
		{"null", nil, "null"},
		{"true", true, "true"},
		{"false", false, "false"},
		{"int", 42, "42"},
		{"negative int64", int64(-7), "-7"},
		{"min int64", int64(math.MinInt64), "-9223372036854775808"},
		{"int8", int8(-8), "-8"},
		{"max uint64 that fits", uint64(math.MaxInt64), "9223372036854775807"},
		{"integral float keeps a decimal point", 1.0, "1.0"},
		{"negative zero", math.Copysign(0, -1), "-0.0"},
		{"float", 0.25, "0.25"},
		{"large float uses an exponent", 1e300, "1e+300"},
		{"small float", 1.5e-7, "1.5e-07"},
		{"float32 with its own shortest digits", float32(0.1), "0.1"},
		{"named float type", weight(2), "2.0"},
		{"plain string", "alice", `"alice"`},
		{"double quote escaped", `say "hi"`, `"say \"hi\""`},
		{"backslash escaped", `a\b`, `"a\\b"`},
		{"backslash before quote", `\"`, `"\\\""`},
		{"injection attempt stays inside the quotes", `"}) DETACH DELETE n //`, `"\"}) DETACH DELETE n //"`},
		{"newline and tab sent raw", "a\n\tb", "\"a\n\tb\""},
		{"single quote and back-quote sent raw", "it's `x`", "\"it's `x`\""},
		{"unicode sent raw", "zoë 😀", `"zoë 😀"`},
		{"empty list", []any{}, "[]"},
		{"list of mixed values", []any{1, "a", nil, 2.5}, `[1, "a", null, 2.5]`},
		{"typed slice", []string{"x", "y"}, `["x", "y"]`},
		{"array", [2]int{1, 2}, "[1, 2]"},
		{"float32 vector", []float32{0.5, 1}, "[0.5, 1.0]"},
		{"map keys sorted and back-quoted", map[string]any{"b": 1, "a": "x"}, "{`a`: \"x\", `b`: 1}"},
		{"map key with spaces and quotes", map[string]int{`a "b" c`: 1}, "{`a \"b\" c`: 1}"},
		{"nested rows", []map[string]any{{"k": "a", "w": 0.5}}, "[{`k`: \"a\", `w`: 0.5}]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := appendLiteral(nil, tt.value, 0)
			if err != nil {
				t.Fatalf("appendLiteral(%#v): %v", tt.value, err)
			}
			if string(got) != tt.want {
				t.Errorf("appendLiteral(%#v) = %s, want %s", tt.value, got, tt.want)
			}
		})
	}
}

func TestParamsThatCannotBeEncodedAreRefused(t *testing.T) {
	cyclic := []any{nil}
	cyclic[0] = cyclic
	tests := []struct {
		name    string
		value   any
		wantErr string
	}{
		{"uint64 beyond int64 (the server would clamp it)", uint64(math.MaxInt64) + 1, "does not fit"},
		{"NaN", math.NaN(), "no Cypher literal"},
		{"infinity", math.Inf(1), "no Cypher literal"},
		{"NUL in a string", "a\x00b", "NUL"},
		{"NUL in a nested string", []any{"ok", "a\x00"}, "[1]: string contains a NUL"},
		{"back-quote in a map key", map[string]any{"a`b": 1}, "back-quotes"},
		{"non-string map keys", map[int]any{1: 1}, "keys must be strings"},
		{"time.Time", time.Now(), "unix milliseconds"},
		{"time.Duration", time.Second, "unix milliseconds"},
		{"bytes", []byte("x"), "pass text as a string"},
		{"struct", struct{ A int }{1}, "not a supported"},
		{"pointer", new(int), "not a supported"},
		{"value containing itself", cyclic, "nested more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := appendLiteral(nil, tt.value, 0)
			if err == nil {
				t.Fatalf("appendLiteral(%v) = %s, want an error", tt.name, got)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not mention %q", err, tt.wantErr)
			}
		})
	}
}

func TestWithParamsPrefixesSortedHeader(t *testing.T) {
	got, err := withParams("RETURN $b, $a", map[string]any{"b": "x", "a": 1, "a_2": nil})
	if err != nil {
		t.Fatal(err)
	}
	want := `CYPHER a=1 a_2=null b="x" RETURN $b, $a`
	if got != want {
		t.Errorf("withParams = %s, want %s", got, want)
	}
	if got, _ := withParams("RETURN 1", nil); got != "RETURN 1" {
		t.Errorf("without params = %q, want the query unchanged", got)
	}
}

func TestWithParamsRefusesBadNames(t *testing.T) {
	for _, name := range []string{"", "1a", "a b", "a-b", "a=1 b", "ä", "a`"} {
		if q, err := withParams("RETURN 1", map[string]any{name: 1}); err == nil {
			t.Errorf("name %q accepted: %s", name, q)
		}
	}
}
