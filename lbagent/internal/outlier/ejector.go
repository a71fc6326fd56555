package outlier

import (
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/lbagent/internal/agent"
	"github.com/berthhq/berth/lbagent/internal/state"
)

// Metrics counts ejections and sets the ejected gauge (metric.AppTraffic).
// Calls come from the agent's goroutine.
type Metrics interface {
	Ejection(app string)
	Ejected(byApp map[string]int)
}

// Ejector is the agent's side of a Detector: it filters each snapshot the
// agent observes, and logs and counts every ejection, return and refusal.
// Filter and Ejected are called from the agent's Run goroutine.
type Ejector struct {
	det     *Detector
	metrics Metrics
	logger  *zap.Logger
}

// NewEjector returns the agent's side of det; metrics may be nil.
func NewEjector(det *Detector, metrics Metrics, logger *zap.Logger) *Ejector {
	return &Ejector{det: det, metrics: metrics, logger: logger.Named("outlier")}
}

// Filter returns snap without the instances ejected at now, and when the
// next ejection ends (zero: none).
func (e *Ejector) Filter(snap state.Snapshot, now time.Time) (state.Snapshot, time.Time) {
	out, changes, refusals, wake := e.det.Filter(snap, now)
	for _, c := range changes {
		if c.Ejected {
			e.logger.Warn("instance ejected from this nginx's rotation for failing real traffic",
				zap.String(logging.KeyApp, c.App), zap.String(logging.KeyInstance, c.Instance), zap.String("address", c.Address),
				zap.String("reason", c.Reason), zap.Int("times", c.Times), zap.Duration("for", c.Until.Sub(now)))
			if e.metrics != nil {
				e.metrics.Ejection(c.App)
			}
			continue
		}
		e.logger.Info("ejected instance back in this nginx's rotation", zap.String(logging.KeyApp, c.App),
			zap.String(logging.KeyInstance, c.Instance), zap.String("address", c.Address), zap.Int("times", c.Times))
	}
	for _, r := range refusals {
		e.logger.Warn("instance fails real traffic but stays in rotation: ejecting it would pass health.outlier.max_ejected_percent",
			zap.String(logging.KeyApp, r.App), zap.String(logging.KeyInstance, r.Instance), zap.String("reason", r.Reason))
	}
	if e.metrics != nil && (len(changes) > 0 || len(refusals) > 0) {
		e.metrics.Ejected(e.det.EjectedByApp())
	}
	return out, wake
}

var _ agent.Ejector = (*Ejector)(nil)

// Ejected returns the instances ejected now, for the agents record.
func (e *Ejector) Ejected() []msg.Ejection { return e.det.Ejected() }
