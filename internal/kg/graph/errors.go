package graph

import (
	"errors"
	"strings"
)

// Error is an error reply from FalkorDB: a syntax or semantic error in the
// query, a run-time error (division by zero, type mismatch), a constraint
// violation, a timeout. Failures to reach the server are not *Error; they
// are returned wrapped, so errors.Is(err, context.DeadlineExceeded) and the
// like still work on them.
//
// Check for a kind with errors.Is and the sentinels below, or get the
// message with errors.As.
type Error struct {
	Graph string // the graph queried
	Query string // the Cypher as passed by the caller, without parameters
	Msg   string // the server's message, verbatim
}

func (e *Error) Error() string { return "graph " + e.Graph + ": " + e.Msg }

// Sentinels matched by (*Error).Is on the server's message.
var (
	// ErrTimeout: the query ran past its TIMEOUT and was aborted (for
	// writes only when the server sets TIMEOUT_MAX or TIMEOUT_DEFAULT; a
	// write that times out is rolled back).
	ErrTimeout = errors.New("query timed out")
	// ErrConstraintViolation: a write broke a unique or mandatory
	// constraint and was rolled back.
	ErrConstraintViolation = errors.New("constraint violation")
	// ErrNoGraph: a read-only query on a graph that does not exist. (A
	// write creates the graph.)
	ErrNoGraph = errors.New("graph does not exist")
)

// Is reports whether the server's message is of the kind target names.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrTimeout:
		return strings.Contains(e.Msg, "Query timed out")
	case ErrConstraintViolation:
		return strings.Contains(e.Msg, "constraint violation")
	case ErrNoGraph:
		return strings.Contains(e.Msg, "Invalid graph operation on empty key")
	}
	return false
}
