package spec

import (
	"encoding/json"
	"time"
)

// The health.outlier defaults, laid under the fields a present block
// leaves out, and the bounds of each field.
const (
	DefaultOutlierConsecutive5xx    = 5
	DefaultOutlierErrorPercent      = 50
	DefaultOutlierMinRequests       = 20
	DefaultOutlierInterval          = 10 * time.Second
	DefaultOutlierBaseEjection      = 30 * time.Second
	DefaultOutlierMaxEjectedPercent = 50

	MaxOutlierConsecutive5xx = 10000
	MaxOutlierMinRequests    = 1000000
	MinOutlierInterval       = time.Second
	MaxOutlierInterval       = 10 * time.Minute
	MinOutlierBaseEjection   = time.Second
	MaxOutlierBaseEjection   = time.Hour
)

// Outlier is passive health from real traffic (health.outlier), as Envoy's
// outlier detection: each lbagent counts, per instance, the 5xx answers and
// failed upstream connections in the requests it passed, and takes an
// instance over the limit out of its own nginx's rotation for a while.
// Absent: off.
type Outlier struct {
	// Consecutive5xx failures in a row eject an instance; 0 turns this
	// detector off.
	Consecutive5xx int `json:"consecutive_5xx"`
	// ErrorPercent of failed requests within Interval ejects an instance
	// that had at least MinRequests there; 0 turns this detector off.
	ErrorPercent int `json:"error_percent"`
	// MinRequests is the fewest requests in the window ErrorPercent judges.
	MinRequests int `json:"min_requests"`
	// Interval is the sliding window the error percentage is counted over.
	Interval Duration `json:"interval"`
	// BaseEjection × times ejected is how long an ejection lasts.
	BaseEjection Duration `json:"base_ejection"`
	// MaxEjectedPercent is the largest share of the app's instances in
	// rotation that may be ejected at once; the last one never is.
	MaxEjectedPercent int `json:"max_ejected_percent"`
}

// UnmarshalJSON lays the given fields over the outlier defaults.
func (o *Outlier) UnmarshalJSON(b []byte) error {
	type plain Outlier
	p := plain{Consecutive5xx: DefaultOutlierConsecutive5xx, ErrorPercent: DefaultOutlierErrorPercent,
		MinRequests: DefaultOutlierMinRequests, Interval: Duration(DefaultOutlierInterval),
		BaseEjection: Duration(DefaultOutlierBaseEjection), MaxEjectedPercent: DefaultOutlierMaxEjectedPercent}
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	*o = Outlier(p)
	return nil
}

// validate checks an outlier block; nil is off and valid.
func (o *Outlier) validate(path string, es *Errors) {
	if o == nil {
		return
	}
	intIn(es, Join(path, "consecutive_5xx"), o.Consecutive5xx, 0, MaxOutlierConsecutive5xx)
	intIn(es, Join(path, "error_percent"), o.ErrorPercent, 0, 100)
	if o.Consecutive5xx == 0 && o.ErrorPercent == 0 {
		es.Add(Join(path, "error_percent"), "and %s are both 0: set one, or remove %s", Join(path, "consecutive_5xx"), path)
	}
	intIn(es, Join(path, "min_requests"), o.MinRequests, 1, MaxOutlierMinRequests)
	durIn(es, Join(path, "interval"), o.Interval, MinOutlierInterval, MaxOutlierInterval)
	durIn(es, Join(path, "base_ejection"), o.BaseEjection, MinOutlierBaseEjection, MaxOutlierBaseEjection)
	intIn(es, Join(path, "max_ejected_percent"), o.MaxEjectedPercent, 1, 100)
}
