package api

import (
	"context"
	"time"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// MaxClaimErrors caps the conflicts an apply answers with.
const MaxClaimErrors = 20

// ClaimReader reads what an app's routes are checked against, from the
// database each time: the apps that claim its hosts, and the routes of
// the others. Its methods are called concurrently, one per request.
type ClaimReader interface {
	// Claimants returns the app name (when stored) and every other app
	// that claims one of hosts (spec.HostKey), by name.
	Claimants(ctx context.Context, name string, hosts []string) ([]store.App, error)
	// RoutesBesides returns the routes of every app but name together.
	RoutesBesides(ctx context.Context, name string) (int, error)
}

var _ ClaimReader = (*store.Store)(nil)

// checkTenancy checks app against the stored apps: the route cap
// (MaxRoutes) and the route table (checkClaims). The route table decides
// each host by the apps that claim it alone, so only the apps that claim
// one of app's hosts are read, not every app: an apply costs the same
// however many apps there are.
func (a *api) checkTenancy(ctx context.Context, app *spec.App) error {
	apps, err := a.d.Claims.Claimants(ctx, app.Name, app.Routing.HostKeys())
	if err != nil {
		return err
	}
	if a.o.MaxRoutes > 0 {
		if err := a.checkRoutes(ctx, app, apps); err != nil {
			return err
		}
	}
	return checkClaims(app, apps)
}

// checkClaims refuses app when the route table of the stored apps and this
// one (spec.Claims, which lbagent enforces too) denies it a claim: a host
// another app owns and does not share with it, a location another app
// claimed first, a rule that would shadow the owner, or TLS on a host it
// does not own. apps must hold every stored app that claims one of app's
// hosts (others change nothing). The app keeps the claims it has; a host
// it names anew is claimed after every other, as the store will record
// it. Each conflict is an error on its field.
func checkClaims(app *spec.App, apps []store.App) error {
	claimants := make([]spec.Claimant, 0, len(apps)+1)
	var self store.App
	for _, o := range apps {
		if o.Name == app.Name {
			self = o
			continue
		}
		if o.Spec != nil {
			claimants = append(claimants, o.Claimant())
		}
	}
	c := spec.Claimant{Name: app.Name, Created: self.CreatedAt, Claimed: map[string]time.Time{}, Routing: &app.Routing}
	for _, h := range app.Routing.HostKeys() {
		if t, ok := self.HostClaims[h]; ok {
			c.Claimed[h] = t
		}
	}
	table := spec.Claims(append(claimants, c))
	if es := spec.ClaimErrors(table.Conflicts(app.Name), MaxClaimErrors); len(es) > 0 {
		return es
	}
	return nil
}

// conflicts are what app does not get of its routes, by the route table of
// the stored apps that claim its hosts, as messages.
func (a *api) conflicts(ctx context.Context, app store.App) ([]string, error) {
	apps, err := a.d.Claims.Claimants(ctx, app.Name, app.Spec.Routing.HostKeys())
	if err != nil {
		return nil, err
	}
	claimants := make([]spec.Claimant, 0, len(apps))
	for _, o := range apps {
		if o.Spec != nil {
			claimants = append(claimants, o.Claimant())
		}
	}
	var out []string
	for _, c := range spec.Claims(claimants).Conflicts(app.Name) {
		out = append(out, c.Field+": "+c.Error())
	}
	return out, nil
}
