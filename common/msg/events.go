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
	// EventRolloutRolledBack: a rollout failed (its new instances kept
	// failing, or one was not healthy in time), and the spec of the
	// generation that serves is back (auto_rollback).
	EventRolloutRolledBack EventKind = "rollout_rolled_back"
	// EventRolloutFailed: a rollout failed without auto_rollback: no more
	// of its instances start, the old ones keep serving.
	EventRolloutFailed EventKind = "rollout_failed"
	// EventUnplaceable: no host can take an app's instance.
	EventUnplaceable EventKind = "unplaceable"
)

// Event kinds: an app's release task (spec release), run once per new
// version before its first instance starts.
const (
	// EventReleaseStarted: a release container was started, on its host.
	EventReleaseStarted EventKind = "release_started"
	// EventReleaseSucceeded: it exited 0: the rollout starts.
	EventReleaseSucceeded EventKind = "release_succeeded"
	// EventReleaseFailed: it exited non-zero, timed out, could not start
	// or was lost; its details say the exit code and the reason (its log
	// tail is in the API only). The rollout fails as a failed rollout does.
	EventReleaseFailed EventKind = "release_failed"
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
	// EventInstanceExited: an instance's container stopped by itself; its
	// details say the exit code and whether it was OOM-killed.
	EventInstanceExited EventKind = "instance_exited"
	// EventInstanceUnhealthy: a check the scheduler runs itself (health.type
	// docker or exec) turned an instance unhealthy; its message is why.
	EventInstanceUnhealthy EventKind = "instance_unhealthy"
	// EventInstanceEjected: an lbagent took an instance out of its nginx's
	// rotation for failing real traffic (health.outlier); its details say
	// the node, the reason, until when and the how-manyth time.
	EventInstanceEjected EventKind = "instance_ejected"
	// EventInstanceReturned: that ejection ended, and the instance is back
	// in that lbagent's rotation.
	EventInstanceReturned EventKind = "instance_returned"
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
	return []EventKind{EventAppUpdated, EventAppDeleted, EventRouteConflict, EventAppFailed, EventRolloutRolledBack, EventRolloutFailed, EventUnplaceable,
		EventReleaseStarted, EventReleaseSucceeded, EventReleaseFailed,
		EventInstanceStarted, EventInstanceDraining, EventInstanceStopped, EventInstanceReplaced, EventInstanceFailed, EventInstanceLost,
		EventInstanceAdopted, EventInstanceAddressRefused, EventImagePullFailed, EventInstanceCreateFailed, EventInstanceStartFailed,
		EventInstanceExited, EventInstanceUnhealthy, EventInstanceEjected, EventInstanceReturned, EventAppScaled, EventScaleHeld,
		EventCertificateIssued, EventCertificateRenewed, EventCertificateFailed, EventCertificateDelayed}
}
