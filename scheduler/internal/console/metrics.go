package console

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Sign-in results, the label of berth_scheduler_console_signins_total.
const (
	signinOK      = "ok"
	signinRefused = "refused"
	signinError   = "error"
)

// metrics are what an operator reads of the console: sign-ins by result
// (a refused one is an unknown or revoked token, perhaps someone
// guessing), the sessions and live streams open on this replica, and the
// events slow browsers were told they missed.
type metrics struct {
	signins *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{signins: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_scheduler_console_signins_total",
		Help: "Console sign-ins on this replica by result: ok, refused (an unknown or revoked token), error (the token could not be checked)."}, []string{"result"})}
	for _, r := range []string{signinOK, signinRefused, signinError} {
		m.signins.WithLabelValues(r)
	}
	return m
}

// Collectors are the console's metrics, to register once per replica.
func (c *console) collectors() []prometheus.Collector {
	cs := []prometheus.Collector{c.metrics.signins,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_scheduler_console_sessions", Help: "Console sessions this replica holds (signed in, not expired)."},
			func() float64 { return float64(c.sess.count()) })}
	if h := c.o.Live; h != nil {
		cs = append(cs,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_scheduler_console_live_streams", Help: "Console pages following this replica's live events now."},
				func() float64 { return float64(h.Clients()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "berth_scheduler_console_live_missed_total", Help: "Live events a browser was too far behind to be sent (it was told it missed some and fetched its page again)."},
				func() float64 { return float64(h.Missed()) }))
	}
	return cs
}
