package api

import (
	"context"
	"errors"
	"io"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/logs"
)

// LogStreamer streams an app's logs for GET /v1/apps/{name}/logs
// (logs.Reader): it writes lines to w and calls flush when nothing more
// is ready; an error before anything was written is answered as JSON.
// Called concurrently, once per request.
type LogStreamer interface {
	Stream(ctx context.Context, app string, req logs.Request, w io.Writer, flush func() error) error
}

var _ LogStreamer = (*logs.Reader)(nil)

// logWriteTimeout bounds each write of a log stream: a client that stops
// reading is dropped, while one that reads may follow for hours (the
// server's WriteTimeout would end every stream after it).
const logWriteTimeout = 30 * time.Second

func (a *api) logs(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	req, err := logs.ParseQuery(r.URL.Query(), time.Now())
	var fields spec.Errors
	if errors.As(err, &fields) {
		writeJSON(w, http.StatusBadRequest, Error{Error: "invalid logs request", Fields: fields})
		return
	}
	if a.o.Logs == nil {
		writeJSON(w, http.StatusServiceUnavailable, Error{Error: "this scheduler reads no logs"})
		return
	}
	if _, err := a.d.Apps.Get(r.Context(), name); err != nil {
		a.fail(w, err)
		return
	}
	sw := &streamWriter{w: w, rc: http.NewResponseController(w)}
	err = a.o.Logs.Stream(r.Context(), name, req, sw, sw.flush)
	switch {
	case err == nil:
	case !sw.started && errors.As(err, &fields):
		writeJSON(w, http.StatusBadRequest, Error{Error: "invalid logs request", Fields: fields})
	case !sw.started:
		a.fail(w, err)
	case r.Context().Err() == nil:
		a.logger.Debug("log stream ended early", zap.String("app", name), zap.Error(err))
	}
}

// streamWriter answers 200 at its first write or flush, as contentType
// (text/plain when empty), and gives each write logWriteTimeout.
type streamWriter struct {
	w           http.ResponseWriter
	rc          *http.ResponseController
	contentType string
	started     bool
}

func (s *streamWriter) start() {
	if s.started {
		return
	}
	s.started = true
	h := s.w.Header()
	ct := s.contentType
	if ct == "" {
		ct = "text/plain; charset=utf-8"
	}
	h.Set("Content-Type", ct)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	s.w.WriteHeader(http.StatusOK)
}

func (s *streamWriter) Write(p []byte) (int, error) {
	s.start()
	_ = s.rc.SetWriteDeadline(time.Now().Add(logWriteTimeout))
	return s.w.Write(p)
}

func (s *streamWriter) flush() error {
	s.start()
	_ = s.rc.SetWriteDeadline(time.Now().Add(logWriteTimeout))
	return s.rc.Flush()
}
