package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/image"
)

// errUnresolved is a redeploy whose image could not be resolved: 502.
var errUnresolved = errors.New("the image could not be resolved")

// pin pins app's image (no pin without a resolver). An image that cannot
// be pinned is applied as named, and logged: the apply's image_note and
// status say so.
func (a *api) pin(ctx context.Context, app *spec.App) (image.Pin, error) {
	if a.o.Resolve == nil {
		return image.Pin{}, nil
	}
	pin, err := a.o.Resolve(ctx, app.Image)
	if err != nil {
		return image.Pin{}, err
	}
	if h := app.Health; h.IsEnabled() && h.Type == spec.HealthDocker && h.Docker.DockerTest() == nil && pin.NoHealthcheck {
		// Docker would report no health, and the instances would never
		// become healthy: refused, as every problem of a spec is.
		return image.Pin{}, spec.Errors{{Path: "health.docker.test", Message: fmt.Sprintf(
			"must be set: image %s declares no HEALTHCHECK, so health.type docker has nothing to read; set health.docker.test (an argv run in the container), or use another health type", app.Image)}}
	}
	switch {
	case pin.Ref == "":
		a.logger.Warn("image not pinned: the hosts pull it by its name", zap.String(logging.KeyApp, app.Name), zap.String("image", app.Image),
			zap.String("reason", pin.Reason))
	case pin.Reason != "":
		a.logger.Warn("image pinned from the engines: the registry did not answer", zap.String(logging.KeyApp, app.Name), zap.String("image", app.Image),
			zap.String("image_ref", pin.Ref), zap.String("reason", pin.Reason))
	}
	return pin, nil
}

// pinNote says how image was pinned (pin, this request's; stored, the
// ref the generation keeps).
func pinNote(img string, pin image.Pin, stored string) string {
	switch {
	case pin.Ref == "" && stored != "":
		return fmt.Sprintf("image %s could not be resolved (%s): the generation keeps its pin %s", img, pin.Reason, stored)
	case pin.Ref == "" && pin.Reason != "":
		return fmt.Sprintf("image %s is not pinned (%s): each host pulls it by its name when it lacks it", img, pin.Reason)
	case pin.Ref == "":
		return ""
	case pin.Source == image.FromEngine && image.IsID(pin.Ref):
		return fmt.Sprintf("image %s exists only in the hosts' engines: pinned to its image ID %s; a host that lacks it is reported", img, pin.Ref)
	case pin.Source == image.FromEngine:
		return fmt.Sprintf("image %s pinned to %s, the digest an engine holds: the registry did not answer (%s)", img, pin.Ref, pin.Reason)
	case pin.Source == image.FromSpec:
		return fmt.Sprintf("image %s: the spec's digest", img)
	}
	return fmt.Sprintf("image %s pinned to %s", img, pin.Ref)
}

// redeploy resolves an app's image again: a new digest (or image ID) is a
// new generation of the same spec, rolled out by the rolling update's
// rules; the same one changes nothing (changed false).
func (a *api) redeploy(w http.ResponseWriter, r *http.Request) {
	if a.o.Resolve == nil {
		writeJSON(w, http.StatusServiceUnavailable, Error{Error: "this scheduler resolves no images"})
		return
	}
	cur, err := a.d.Apps.Get(r.Context(), r.PathValue("name"))
	if err != nil {
		a.fail(w, err)
		return
	}
	pin, err := a.o.Resolve(r.Context(), cur.Spec.Image)
	if err != nil {
		a.fail(w, err)
		return
	}
	if pin.Ref == "" || pin.Reason != "" {
		// Without the registry's answer a moved tag cannot be told from
		// an unmoved one: nothing changes, and the caller hears why.
		a.logger.Warn("redeploy: the image could not be resolved", zap.String(logging.KeyApp, cur.Name), zap.String("image", cur.Spec.Image),
			zap.String("reason", pin.Reason))
		a.fail(w, fmt.Errorf("redeploy %s: %w: %s: %s; nothing changed", cur.Name, errUnresolved, cur.Spec.Image, pin.Reason))
		return
	}
	app, changed, err := a.d.Changes.Redeploy(r.Context(), cur.Name, cur.Generation, pin.Ref)
	if err != nil {
		a.fail(w, err)
		return
	}
	v := view(app, true)
	v.Changed = &changed
	v.ImageNote = pinNote(cur.Spec.Image, pin, app.ImageRef)
	if changed {
		a.logger.Info("redeploy: a new digest", zap.String(logging.KeyApp, app.Name), zap.Int64("generation", app.Generation),
			zap.String("from", app.PreviousImageRef), zap.String("to", app.ImageRef))
	}
	writeJSON(w, http.StatusOK, v)
}
