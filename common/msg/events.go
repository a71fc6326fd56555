package msg

// EventKind says what happened in a lifecycle Event: the last token of its
// subject (events.<app>.<kind>). Every kind the scheduler records is one
// of the constants below, each described in docs/nats.md (Event kinds).
type EventKind string

// Event kinds: an app's specs.
const (
	// EventAppUpdated: a spec was applied, scaled or rolled back.
	EventAppUpdated EventKind = "app_updated"
	// EventAppDeleted: an app was deleted.
	EventAppDeleted EventKind = "app_deleted"
	// EventRouteConflict: an app claims a route another app claimed first.
	EventRouteConflict EventKind = "route_conflict"
	// EventAppFailed: the restart budget is spent, the breaker is open.
	EventAppFailed EventKind = "app_failed"
	// EventRolloutRolledBack: a rollout was not healthy in time, and the
	// previous spec is back.
	EventRolloutRolledBack EventKind = "rollout_rolled_back"
	// EventUnplaceable: no host can take an app's instance.
	EventUnplaceable EventKind = "unplaceable"
)

// Event kinds: an app's instances.
const (
	EventInstanceStarted        EventKind = "instance_started"
	EventInstanceDraining       EventKind = "instance_draining"
	EventInstanceStopped        EventKind = "instance_stopped"
	EventInstanceReplaced       EventKind = "instance_replaced"
	EventInstanceFailed         EventKind = "instance_failed"
	EventInstanceLost           EventKind = "instance_lost"
	EventInstanceAdopted        EventKind = "instance_adopted"
	EventInstanceAddressRefused EventKind = "instance_address_refused"
	EventImagePullFailed        EventKind = "image_pull_failed"
	EventInstanceCreateFailed   EventKind = "instance_create_failed"
	EventInstanceStartFailed    EventKind = "instance_start_failed"
)

// Event kinds: the autoscaler's.
const (
	// EventAppScaled: the autoscaler changed the replica count.
	EventAppScaled EventKind = "app_scaled"
	// EventScaleHeld: a limit holds the count the metrics recommend.
	EventScaleHeld EventKind = "scale_held"
)

// Event kinds: the certificate manager's.
const (
	EventCertificateIssued  EventKind = "certificate_issued"
	EventCertificateRenewed EventKind = "certificate_renewed"
	EventCertificateFailed  EventKind = "certificate_failed"
	// EventCertificateDelayed: a due order waits for the global order
	// rate, said once as it begins to wait.
	EventCertificateDelayed EventKind = "certificate_delayed"
)

// EventKinds returns every event kind the scheduler records.
func EventKinds() []EventKind {
	return []EventKind{EventAppUpdated, EventAppDeleted, EventRouteConflict, EventAppFailed, EventRolloutRolledBack, EventUnplaceable,
		EventInstanceStarted, EventInstanceDraining, EventInstanceStopped, EventInstanceReplaced, EventInstanceFailed, EventInstanceLost,
		EventInstanceAdopted, EventInstanceAddressRefused, EventImagePullFailed, EventInstanceCreateFailed, EventInstanceStartFailed,
		EventAppScaled, EventScaleHeld,
		EventCertificateIssued, EventCertificateRenewed, EventCertificateFailed, EventCertificateDelayed}
}
