package store

import "context"

// The actors that are no API token: the scheduler acting on its own (a
// crash, a rollback after a failed rollout, a certificate), its
// autoscaler, the --api-token-file token, and a request to an open
// loopback API that gave no token. No API token may take one of these
// names (auth.CheckName), so an event's actor always says truly whether a
// person's token or the scheduler made the change.
const (
	ActorScheduler  = "scheduler"
	ActorAutoscaler = "autoscaler"
	ActorBootstrap  = "bootstrap"
	ActorAnonymous  = "anonymous"
)

type actorKey struct{}

// WithActor returns ctx carrying actor: the name every app change and
// event written with ctx records as who made it.
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

// ActorOf returns the actor ctx carries, ActorScheduler when none: what
// the scheduler does with a context of its own, it does on its own.
func ActorOf(ctx context.Context) string {
	if a, ok := ctx.Value(actorKey{}).(string); ok && a != "" {
		return a
	}
	return ActorScheduler
}
