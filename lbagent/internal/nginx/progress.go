package nginx

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is the unit of /proc/<pid>/stat's CPU times (sysconf
// _SC_CLK_TCK): 100 per second on every Linux platform Go supports.
const clockTicks = 100

// MasterCPU returns the CPU time nginx's master has used, from
// /proc/<pid>/stat. On SIGHUP the master parses the whole config before
// it starts new workers; a master whose CPU time advances is still
// working on a reload, one whose CPU time stands is done (or failed).
func MasterCPU(pid int) (time.Duration, error) {
	if pid <= 1 {
		return 0, fmt.Errorf("nginx master cpu: pid %d is not a master", pid)
	}
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("nginx master cpu: %w", err)
	}
	return parseStatCPU(string(data))
}

// parseStatCPU reads utime + stime (fields 14 and 15) from a
// /proc/<pid>/stat line. The command name (field 2) is in parentheses
// and may hold spaces or parentheses itself: fields are counted after the
// last ')'.
func parseStatCPU(stat string) (time.Duration, error) {
	end := strings.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, errors.New("nginx master cpu: /proc stat without a command name")
	}
	// After ')': state is field 3, so utime (14) and stime (15) are the
	// 12th and 13th of the rest.
	rest := strings.Fields(stat[end+1:])
	if len(rest) < 13 {
		return 0, fmt.Errorf("nginx master cpu: /proc stat has %d fields after the command name, want 13 or more", len(rest))
	}
	var ticks uint64
	for _, f := range rest[11:13] {
		n, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("nginx master cpu: /proc stat field %q is not a tick count", f)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// MasterCPU is the CPU time of the master the supervisor runs or adopted.
// The pid is read under the lock: Run releases a master's handle (which
// writes its Pid) once it has cleared it.
func (s *Supervisor) MasterCPU() (time.Duration, error) {
	pid := s.PID()
	if pid == 0 {
		return 0, errors.New("nginx master cpu: nginx is not running")
	}
	return MasterCPU(pid)
}

// MasterCPU is the CPU time of the master named in the pid file.
func (p PidFile) MasterCPU() (time.Duration, error) {
	data, err := os.ReadFile(string(p))
	if err != nil {
		return 0, fmt.Errorf("nginx master cpu: read pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("nginx master cpu: pid file %s holds %q, not a pid", p, strings.TrimSpace(string(data)))
	}
	return MasterCPU(pid)
}
