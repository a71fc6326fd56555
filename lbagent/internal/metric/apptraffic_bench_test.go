package metric

import (
	"fmt"
	"testing"
	"time"

	"github.com/berthhq/berth/lbagent/internal/accesslog"
)

// benchLines are access log datagrams as nginx sends them, over 1000 apps,
// with a 2xx/4xx/5xx mix, a retry after a refused connection now and then.
func benchLines() [][]byte {
	var out [][]byte
	for i := range 4096 {
		app := fmt.Sprintf("app-%04d", i*7919%1000)
		status, ups, uct := 200, "200", "0.000"
		switch i % 50 {
		case 0:
			status, ups, uct = 502, "502", "-"
		case 1:
			status, ups, uct = 200, "502, 200", "-, 0.000"
		case 2, 3:
			status = 404
			ups = "404"
		}
		rt := float64(i%97) / 1000
		out = append(out, fmt.Appendf(nil, `<190>Dec  6 09:30:00 berth: {"app":"%s","status":%d,"request_time":%.3f,"upstream":"10.0.0.%d:8080",`+
			`"upstream_status":"%s","upstream_response_time":"%.3f","upstream_connect_time":"%s","bytes_sent":512,"method":"GET","host":"%s.example.com","request_id":"0123456789abcdef0123456789abcdef"}`,
			app, status, rt, i%250, ups, rt*0.9, uct, app))
	}
	return out
}

// BenchmarkAccessLogLine is the cost of one access log line in lbagent's
// receiver: the floor is what it did before the per-app series (parse,
// then the traffic window's Add); "classic" adds AppTraffic.Add with the
// bucketed histogram, "native" with a native histogram beside it. The
// floor and each variant are timed in alternating chunks of the same run,
// so a busy machine slows both; ratio is variant / floor.
func BenchmarkAccessLogLine(b *testing.B) {
	lines := benchLines()
	for _, native := range []bool{false, true} {
		name := "classic"
		if native {
			name = "native"
		}
		b.Run(name, func(b *testing.B) {
			agg := accesslog.NewAggregator("lb-1", time.Now())
			at := NewAppTraffic(AppTrafficOptions{MaxApps: 1000, Native: native})
			floor := func(line []byte) {
				e, err := accesslog.Parse(line)
				if err != nil {
					b.Fatal(err)
				}
				agg.Add(e)
			}
			export := func(line []byte) {
				e, err := accesslog.Parse(line)
				if err != nil {
					b.Fatal(err)
				}
				agg.Add(e)
				at.Add(e)
			}
			for _, l := range lines { // every app's series exist: the steady state
				export(l)
			}
			const chunk = 128
			var tFloor, tExport time.Duration
			n := 0
			b.ResetTimer()
			for n < b.N {
				k := min(chunk, b.N-n)
				first, second, tFirst, tSecond := floor, export, &tFloor, &tExport
				if n/chunk%2 == 1 { // alternate which goes first
					first, second, tFirst, tSecond = export, floor, &tExport, &tFloor
				}
				start := time.Now()
				for i := range k {
					first(lines[(n+i)%len(lines)])
				}
				mid := time.Now()
				for i := range k {
					second(lines[(n+i)%len(lines)])
				}
				*tSecond += time.Since(mid)
				*tFirst += mid.Sub(start)
				n += k
				if n%(256*chunk) == 0 { // windows are flushed every 5 s in lbagent
					agg.Flush(time.Now(), nil)
				}
			}
			b.ReportMetric(float64(tFloor.Nanoseconds())/float64(b.N), "floor-ns/line")
			b.ReportMetric(float64(tExport.Nanoseconds())/float64(b.N), "export-ns/line")
			b.ReportMetric(float64(tExport)/float64(tFloor), "ratio")
			b.ReportMetric(float64(tExport-tFloor)/float64(b.N), "added-ns/line")
		})
	}
}

// BenchmarkAppTrafficAdd is AppTraffic.Add alone on a parsed entry.
func BenchmarkAppTrafficAdd(b *testing.B) {
	for _, native := range []bool{false, true} {
		b.Run(fmt.Sprintf("native=%v", native), func(b *testing.B) {
			at := NewAppTraffic(AppTrafficOptions{MaxApps: 1000, Native: native})
			entries := make([]accesslog.Entry, 1000)
			for i := range entries {
				entries[i] = accesslog.Entry{App: fmt.Sprintf("app-%04d", i), Status: 200 + i%4*100, RequestSeconds: float64(i%97) / 1000, ConnectErrors: i % 50 / 49}
				at.Add(entries[i])
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				at.Add(entries[i%len(entries)])
			}
		})
	}
}
