package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/berthhq/berth/scheduler/internal/api"
)

// redeploy resolves an app's image again (POST /v1/apps/{name}/redeploy):
// a new digest is a new generation, followed with --wait; the same one
// prints unchanged and exits 0.
func redeploy(ctx context.Context, r *redeployCmd, out io.Writer) error {
	if err := r.waitFlags.check(); err != nil {
		return &apiError{status: http.StatusBadRequest, body: api.Error{Error: err.Error()}}
	}
	cl, err := newClient(r.clientFlags)
	if err != nil {
		return err
	}
	var v api.AppView
	if err := cl.do(ctx, "POST", "/v1/apps/"+url.PathEscape(r.App)+"/redeploy", nil, &v); err != nil {
		return err
	}
	changed := v.Changed != nil && *v.Changed
	if err := show(out, r.Output, v, func(w io.Writer) {
		if !changed {
			fmt.Fprintf(w, "%s: unchanged, generation %d: image %s is still %s\n", v.Name, v.Generation, imageOf(v), cmp.Or(v.ImageRef, "not pinned"))
			return
		}
		fmt.Fprintf(w, "%s: redeploying, generation %d: image %s moved from %s to %s; every instance is replaced by a rolling update\n",
			v.Name, v.Generation, imageOf(v), cmp.Or(v.PreviousImageRef, "not pinned"), v.ImageRef)
	}); err != nil || !r.Wait || !changed {
		return err
	}
	return waitRollout(ctx, cl, v.Name, v.Generation, r.Timeout, reconnectEvery, out)
}

func imageOf(v api.AppView) string {
	if v.Spec == nil {
		return "?"
	}
	return v.Spec.Image
}

// pinLine says what the hosts run for an app's image, for status.
func pinLine(v api.AppView) string {
	if v.ImageRef == "" {
		return "pinned: no (each host pulls " + imageOf(v) + " by its name; scheduler redeploy or an apply pins it)"
	}
	return "pinned: " + v.ImageRef
}
