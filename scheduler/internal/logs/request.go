// Package logs reads an app's logs for the API: it reads each instance's
// log from the Docker engine of the host it runs on, prefixes each line
// with its instance (and host, when the app runs on several), merges the
// instances' lines in time order (without follow) or hands them on as they
// come (with follow, attaching to the instances a rollout starts), and
// bounds what one request may read.
package logs

import (
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/berthhq/berth/common/spec"
)

// Bounds of one request, documented in docs/operations.md.
const (
	// MaxTail caps ?tail=: the last lines read of each instance.
	MaxTail = 100_000
	// MaxLines and MaxBytes cap what a request without follow writes;
	// past either, it ends with a line that says so.
	MaxLines = 500_000
	MaxBytes = 64 << 20
	// MaxSince is the furthest back ?since= given as a duration reaches.
	MaxSince = 366 * 24 * time.Hour
)

// Request is what one read of an app's logs asks for.
type Request struct {
	// Instance, when set, reads only this instance.
	Instance string
	// Follow keeps the stream open: new lines, and new instances, as they
	// come, until the client goes away.
	Follow bool
	// Since, when set, skips the lines written before it.
	Since time.Time
	// Tail is how many of each instance's last lines to read; negative:
	// all (within MaxLines and MaxBytes without follow).
	Tail int
	// Timestamps starts each line with the time Docker received it.
	Timestamps bool
}

// ParseQuery reads a Request from the query of GET
// /v1/apps/{name}/logs: instance, follow, since (a Go duration back from
// now, such as 10m, or an RFC 3339 time), tail and timestamps. An error
// is spec.Errors naming each bad parameter and what is allowed.
func ParseQuery(q url.Values, now time.Time) (Request, error) {
	r := Request{Tail: -1}
	var es spec.Errors
	for k := range q {
		switch k {
		case "instance", "follow", "since", "tail", "timestamps":
			if len(q[k]) > 1 {
				es.Add(k, "is given %d times; give it once", len(q[k]))
			}
		default:
			es.Add(trunc(k), "is not a parameter of logs (allowed: follow, instance, since, tail, timestamps)")
		}
	}
	if v := q.Get("instance"); v != "" {
		if err := spec.CheckName(v); err != nil {
			es.Add("instance", "%q is not an instance id (lowercase letters, digits and '-', as scheduler status shows them)", trunc(v))
		}
		r.Instance = v
	}
	r.Follow = flag(q, "follow", &es)
	r.Timestamps = flag(q, "timestamps", &es)
	if v := q.Get("since"); v != "" {
		t, err := ParseSince(v, now)
		es.Check("since", err)
		r.Since = t
	}
	if v := q.Get("tail"); v != "" && v != "all" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > MaxTail {
			es.Add("tail", "%q must be a whole number of lines from 0 to %d, or all", trunc(v), MaxTail)
		}
		r.Tail = n
	}
	if len(es) > 0 {
		return Request{}, es
	}
	return r, nil
}

// ParseSince reads since: a Go duration back from now (10m, 1h30m) or an
// RFC 3339 time (2026-12-06T08:00:00Z).
func ParseSince(v string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(v); err == nil {
		if d <= 0 || d > MaxSince {
			return time.Time{}, fmt.Errorf("%q must be a duration back from now, from 1ns to %s, such as 10m", trunc(v), MaxSince)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q must be a Go duration back from now (such as 10m or 1h30m) or an RFC 3339 time (such as 2026-12-06T08:00:00Z)", trunc(v))
	}
	return t, nil
}

// Query is r as the query parameters ParseQuery reads.
func (r Request) Query() url.Values {
	q := url.Values{}
	if r.Instance != "" {
		q.Set("instance", r.Instance)
	}
	if r.Follow {
		q.Set("follow", "true")
	}
	if !r.Since.IsZero() {
		q.Set("since", r.Since.UTC().Format(time.RFC3339Nano))
	}
	if r.Tail >= 0 {
		q.Set("tail", strconv.Itoa(r.Tail))
	}
	if r.Timestamps {
		q.Set("timestamps", "true")
	}
	return q
}

func flag(q url.Values, name string, es *spec.Errors) bool {
	vs, ok := q[name]
	if !ok {
		return false
	}
	v := q.Get(name)
	if len(vs) == 0 || v == "" {
		return true // ?follow alone
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		es.Add(name, "%q must be true or false", trunc(v))
	}
	return b
}

// trunc keeps a hostile value short in an error.
func trunc(v string) string {
	if len(v) > 64 {
		return v[:64] + "…"
	}
	return v
}
