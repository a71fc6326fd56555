package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/api"
	"github.com/berthhq/berth/scheduler/internal/logs"
)

// appLogs streams GET /v1/apps/{name}/logs to out as it comes, until
// the scheduler ends it (without --follow) or ctx ends (interrupted).
func appLogs(ctx context.Context, l *logsCmd, out io.Writer) error {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("instance", l.Instance)
	set("since", l.Since)
	set("tail", l.Tail)
	if l.Follow {
		q.Set("follow", "true")
	}
	if l.Timestamps {
		q.Set("timestamps", "true")
	}
	// The scheduler checks them again; a bad flag fails here, before any
	// request, named as a flag.
	if _, err := logs.ParseQuery(q, time.Now()); err != nil {
		var es spec.Errors
		if errors.As(err, &es) {
			for i := range es {
				es[i].Path = "--" + es[i].Path
			}
		}
		return &apiError{status: http.StatusBadRequest, body: api.Error{Error: "invalid flags", Fields: es}}
	}
	if err := spec.CheckName(l.App); err != nil {
		return &apiError{status: http.StatusBadRequest, body: api.Error{Error: "app: " + err.Error()}}
	}
	cl, err := newClient(l.clientFlags)
	if err != nil {
		return err
	}
	path := "/v1/apps/" + l.App + "/logs?" + q.Encode()
	body, err := cl.stream(ctx, path)
	if err != nil {
		return err
	}
	defer body.Close()
	if _, err := io.Copy(out, body); err != nil && ctx.Err() == nil {
		return fmt.Errorf("the log stream broke: %w", err)
	}
	return nil
}
