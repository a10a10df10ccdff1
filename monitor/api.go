package monitor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
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

// enqueueAPI serves POST /api/v1/tasks: the body is one JSON
// enqueue.Request, validated exactly as the enqueuer CLI validates it. It
// runs after the guard, so nothing reads a body before authentication.
func enqueueAPI(catalog []jobs.Spec, c enqueue.Enqueuer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A JSON content type also makes a browser preflight the request,
		// which this server never approves.
		if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
			refuse(w, r, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
			return
		}
		req, err := enqueue.DecodeRequest(http.MaxBytesReader(w, r.Body, maxRequestBytes))
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			writeJSON(w, http.StatusRequestEntityTooLarge, apiError{fmt.Sprintf("request body too large (at most %d bytes)", tooBig.Limit)})
			return
		case err != nil:
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
