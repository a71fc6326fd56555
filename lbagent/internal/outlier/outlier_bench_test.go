package outlier

import (
	"testing"
	"time"

	"github.com/berthhq/berth/lbagent/internal/accesslog"
)

// BenchmarkSinkAdd is the cost the detector adds per access log line of an
// app with health.outlier, as a ratio to parsing the line (the floor,
// measured in the same run).
func BenchmarkSinkAdd(b *testing.B) {
	line := []byte(`<190>Nov 24 00:45:21 berth: {"app":"web","status":200,"request_time":0.003,"upstream":"10.0.0.1:80","upstream_status":"200","upstream_response_time":"0.002","upstream_connect_time":"0.000"}`)
	d := New(nil)
	_, _, _, _ = d.Filter(snapOf(cfg(), 3), t0)
	s := Sink{Detector: d, Now: func() time.Time { return t0 }}
	e, err := accesslog.Parse(line)
	if err != nil {
		b.Fatal(err)
	}
	const floorN = 20000
	start := time.Now()
	for range floorN {
		_, _ = accesslog.Parse(line)
	}
	floor := float64(time.Since(start).Nanoseconds()) / floorN
	b.ReportAllocs()
	b.ResetTimer()
	start = time.Now()
	for range b.N {
		s.Add(e)
	}
	b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N)/floor, "x_parse")
}
