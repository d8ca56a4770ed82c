package child

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// StartTime returns field 22 of /proc/<pid>/stat (start time in clock ticks
// since boot), which with the pid names one process, not whoever reuses the
// number later.
func StartTime(pid int) (uint64, error) {
	_, start, err := procStat(pid)
	return start, err
}

// Alive reports whether the process with this pid and start time (from
// StartTime) still runs: it exists, is not a zombie, and is not a later
// process that reuses the pid.
func Alive(pid int, startTime uint64) bool {
	state, start, err := procStat(pid)
	return err == nil && start == startTime && state != "Z" && state != "X"
}

// procStat returns the state (field 3) and start time (field 22) of /proc/<pid>/stat.
func procStat(pid int) (state string, start uint64, err error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:]) // fields[0] is field 3
	if len(fields) < 20 {
		return "", 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	start, err = strconv.ParseUint(fields[19], 10, 64)
	return fields[0], start, err
}
