package console

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/berthhq/berth/scheduler/internal/api"
)

// The console is a client of the API, in process: every page reads, and
// every action changes, through the same routes the CLI calls, with the
// signed-in session's token as the bearer. So the console can show and
// do exactly what its token may through the API, no more: the scopes,
// the app limits of deploy tokens, the redaction of secrets and the
// validation are the API's, and a follower replica shows what its API
// answers.

// APIError is an API answer other than 2xx: its status and body.
type APIError struct {
	Status int
	Body   api.Error
}

func (e *APIError) Error() string {
	if e.Body.Error != "" {
		return e.Body.Error
	}
	return fmt.Sprintf("the API answered %d %s", e.Status, http.StatusText(e.Status))
}

// Refused says whether err is the API refusing the token (401 or 403):
// the page shows why, naming the scope it needs.
func Refused(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && (ae.Status == http.StatusForbidden || ae.Status == http.StatusUnauthorized)
}

// maxAPIAnswer caps what the console reads of one API answer.
const maxAPIAnswer = 64 << 20

// call sends method path (with a JSON body when in is not nil) to the
// API as the viewer, and decodes a 2xx answer into out (when not nil).
func (c *console) call(r *http.Request, method, path string, in, out any) error {
	v := viewerOf(r)
	// The API reads every request's body; one without is empty, not nil.
	var body io.Reader = http.NoBody
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(r.Context(), method, path, body)
	if err != nil {
		return err
	}
	req.RemoteAddr = r.RemoteAddr
	req.Header.Set("Authorization", "Bearer "+v.secret)
	req.Header.Set("User-Agent", "berth-console")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	rec := &recorder{header: http.Header{}}
	c.o.API.ServeHTTP(rec, req)
	data := rec.body.Bytes()
	if rec.code/100 != 2 {
		ae := &APIError{Status: rec.code}
		_ = json.Unmarshal(data, &ae.Body)
		return ae
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode the API's answer to %s %s: %w", method, path, err)
	}
	return nil
}

// recorder is the in-memory answer of one API call, capped at
// maxAPIAnswer: past it, the answer is cut (and fails to decode).
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	if room := maxAPIAnswer - r.body.Len(); len(b) > room {
		r.body.Write(b[:max(room, 0)])
		return 0, errors.New("the API's answer is over the console's cap")
	}
	return r.body.Write(b)
}
