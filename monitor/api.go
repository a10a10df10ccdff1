package monitor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/queue/enqueue"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// maxRequestBytes bounds a POST /api/v1/tasks body.
const maxRequestBytes = jobs.MaxPayloadBytes + 4<<10

type apiError struct {
	Error string `json:"error"`
}

type apiTask struct {
	ID    string `json:"id"`
	Task  string `json:"task"`
	Queue string `json:"queue"`
	State string `json:"state"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// enqueueAPI serves POST /api/v1/tasks: the body is an enqueue.Request,
// validated exactly as the enqueuer CLI validates it.
func enqueueAPI(catalog []jobs.Spec, c enqueue.Enqueuer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBytes))
		if err != nil {
			writeJSON(w, http.StatusRequestEntityTooLarge, apiError{"request body too large or unreadable: " + err.Error()})
			return
		}
		var req enqueue.Request
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{"request body is not a valid enqueue request: " + err.Error()})
			return
		}
		p, err := enqueue.Prepare(catalog, req, time.Now())
		if err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{err.Error()})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		info, err := enqueue.Submit(ctx, c, p)
		switch {
		case errors.Is(err, enqueue.ErrSingletonBusy):
			writeJSON(w, http.StatusConflict, apiError{err.Error()})
		case err != nil:
			writeJSON(w, http.StatusServiceUnavailable, apiError{err.Error()})
		default:
			writeJSON(w, http.StatusCreated, apiTask{ID: info.ID, Task: info.Type, Queue: info.Queue, State: info.State.String()})
		}
	})
}
