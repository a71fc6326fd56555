package reconcile

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"

	"github.com/berthhq/berth/common/spec"
)

// SpecHash identifies what a container is made of: image, command, the
// final environment, port, resources (cpu, memory and pids: a changed pids
// limit rolls, as Docker cannot change it in place), stop signal and log
// limits (logging: a container's log config is fixed at create; a spec
// without them hashes as it did before they existed), and the override of
// the image's HEALTHCHECK (health.docker, fixed at create too). Instances whose hash
// differs from the desired one are replaced by a rolling update. Replicas,
// scaling, routing, load balancing, health checks, timings and the release task are not in
// it, so changing them restarts nothing.
func SpecHash(a *spec.App, env map[string]string) string {
	b, _ := json.Marshal(struct {
		Image     string             `json:"image"`
		Command   []string           `json:"command"`
		Env       map[string]string  `json:"env"` // json sorts map keys
		Port      int                `json:"port"`
		Resources spec.Resources     `json:"resources"`
		Signal    string             `json:"signal"`
		Logging   *spec.Logging      `json:"logging,omitempty"`
		Health    *spec.DockerHealth `json:"docker_health,omitempty"`
	}{a.Image, a.Command, env, a.Port, a.Resources, a.Stop.Signal, logging(a.Logging), DockerHealth(a)})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// DockerHealth is the override of the image's HEALTHCHECK that a's
// containers are created with (health.docker of a docker check), nil for
// none. Docker fixes it at create, so a change rolls the instances; a spec
// without one hashes as it did before it existed.
func DockerHealth(a *spec.App) *spec.DockerHealth {
	if !a.Health.IsEnabled() || a.Health.Type != spec.HealthDocker {
		return nil
	}
	return a.Health.Docker
}

// logging is l as the hash sees it: nil when it sets nothing, so that
// "logging: {}" rolls nothing.
func logging(l *spec.Logging) *spec.Logging {
	if l.IsZero() {
		return nil
	}
	return l
}

// Restarted is the hash of a spec restarted at generation gen (scheduler
// restart): another hash, so every instance is replaced; gen 0 (never
// restarted) leaves it as it is.
func Restarted(hash string, gen int64) string {
	if gen <= 0 {
		return hash
	}
	sum := sha256.Sum256([]byte(hash + ":restarted:" + strconv.FormatInt(gen, 10)))
	return hex.EncodeToString(sum[:8])
}

// Pinned is the hash of a spec whose image is pinned to ref (a digest or
// an image ID): another digest is another hash, so a tag pushed again
// rolls out; no pin ("", every app stored before pinning) leaves the hash
// as it is, so an upgrade restarts nothing.
func Pinned(hash, ref string) string {
	if ref == "" {
		return hash
	}
	sum := sha256.Sum256([]byte(hash + ":pinned:" + ref))
	return hex.EncodeToString(sum[:8])
}
