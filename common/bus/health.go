package bus

import (
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
)

// HealthWriter is the role that writes the health of the instances of an
// app whose check is h: the scheduler when it runs the check itself
// (health.type docker or exec: it alone holds the Docker API), healthd
// for every other check. The health bucket takes both roles' seals (the
// scheduler co-writes it), so each reader of a health value checks its
// Event.Sealer against this, by the app record it holds: a value for an
// http app sealed by the scheduler, or for a docker app sealed by healthd,
// is a takeover attempt and no verdict.
func HealthWriter(h *spec.Health) string {
	if h.Scheduled() {
		return RoleScheduler
	}
	return RoleHealthd
}

// HealthTrusted reports whether a reader takes a health value, sealed by
// sealer (Event.Sealer, Entry.Sealer), for an app whose check is h: always
// when seals are not checked (sealer ""), else only from HealthWriter(h).
func HealthTrusted(h *spec.Health, sealer string) bool {
	return sealer == "" || sealer == HealthWriter(h)
}

// MarkHealthSealer hands inner the health values with their Sealer set
// from the seal (msg.Health.Sealer is never read from the wire), so that
// a reader that keeps them checks HealthTrusted when it uses them.
func MarkHealthSealer(inner Handler[*msg.Health]) Handler[*msg.Health] {
	mark := func(e Event[*msg.Health]) Event[*msg.Health] {
		if e.Op == OpPut && e.Value != nil {
			e.Value.Sealer = e.Sealer
		}
		return e
	}
	return HandlerFuncs[*msg.Health]{
		OnSnapshot: func(evs []Event[*msg.Health], rev uint64) {
			for i := range evs {
				evs[i] = mark(evs[i])
			}
			inner.Snapshot(evs, rev)
		},
		OnUpdate: func(e Event[*msg.Health]) { inner.Update(mark(e)) },
	}
}
