package bench

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// RedisStats reads what the Redis at addr (host:port, or a redis:// URL)
// has spent so far: CPU time (user + system, from INFO cpu) and commands
// processed (INFO stats). The Redis engine's work per connection or per
// message is the difference over a run, divided by what the run did.
func RedisStats(addr string) (cpu time.Duration, cmds int64, err error) {
	if !strings.Contains(addr, "://") {
		addr = "redis://" + addr
	}
	opt, err := rueidis.ParseURL(addr)
	if err != nil {
		return 0, 0, err
	}
	opt.DisableCache = true
	opt.ForceSingleClient = true
	c, err := rueidis.NewClient(opt)
	if err != nil {
		return 0, 0, fmt.Errorf("redis %s: %w", addr, err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := c.Do(ctx, c.B().Info().Build()).ToString()
	if err != nil {
		return 0, 0, fmt.Errorf("redis %s: INFO: %w", addr, err)
	}
	var secs float64
	for _, line := range strings.Split(info, "\r\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch k {
		case "used_cpu_sys", "used_cpu_user":
			f, _ := strconv.ParseFloat(v, 64)
			secs += f
		case "total_commands_processed":
			cmds, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	return time.Duration(secs * float64(time.Second)), cmds, nil
}

// perUnit sets Redis's CPU and commands per unit of work (a connection, a
// message) on r, from before and after a run, when the run measured Redis.
func (o *Options) redisPerUnit(before, after procStat, units int64, cpu *float64, cmds *float64) {
	if o.Redis == "" || units <= 0 {
		return
	}
	*cpu = (after.redisCPU - before.redisCPU).Seconds() * 1e6 / float64(units)
	// INFO itself is one command per reading.
	*cmds = float64(after.redisCmds-before.redisCmds-1) / float64(units)
}
