#!lua name=savestream___LIBRARY_VERSION__
--[[
The savestream function library: the only code that changes a task's state.

Each function validates a transition against the projection, appends the
event to the log (`events`), updates the projection (the task hash and the
`queued` / `running` / `delayed` sorted sets) and, where the transition
queues work, appends a work item to `jobs` -- all in one atomic call. The
Rust mirror of these rules is `Task::apply` in shared/src/task.rs; a test
proves a fold over the log equals the live projection.

A task's event ids are kept in its hash (`log`, space-separated), read and
written with the hash fields every transition touches anyway, so the
history costs no extra command.

Errors are replies whose first word is a code the Rust store maps to a
typed `StoreError`: NOTFOUND, EXISTS, ENDED <status>, STALE <why>,
REUSED <first task id> (an idempotency key repeated with another request).

KEYS, in this order, for every per-task function (built by `Store::task_keys`):
  1 task hash   2 events   3 jobs   4 queued   5 running   6 delayed
  7 idempotency key (create only)
]]

-- The library is named after this build's version (`savestream_<version>`)
-- and so is every function in it (`savestream_create_<version>`); the Rust
-- store calls them so (shared/src/store/library.rs). The libraries of two
-- builds therefore sit side by side in one Redis, as a rolling upgrade
-- needs, and a process never runs its arguments through another build's
-- functions, which may take others: finding none of its names, it loads
-- its own library and calls again.

local LIBRARY_VERSION = '__LIBRARY_VERSION__'

local function register(name, callback)
  redis.register_function(name .. '_' .. LIBRARY_VERSION, callback)
end
local GROUP = 'workers'
-- The `v` of every event written: `EVENT_FORMAT_VERSION` in shared/src/event.rs.
local EVENT_FORMAT_VERSION = '2'

-- Inside a batch call these hold the call's clock (one TIME per batch) and
-- the set operations gathered from every task of the batch (one ZADD, ZREM
-- or XACK per key for the whole batch instead of one per task). Outside
-- a batch they are nil and everything runs at once. A per-task function
-- never reads the sorted sets or the pending list, so deferring writes to
-- them until the end of the call changes no decision.
local batch_now = nil
local batch_now_text = nil
local deferred = nil

-- Whole numbers cross into Redis as text made with '%d': a Lua number
-- passed to redis.call is formatted with '%.14g', whose floating-point
-- printing was a tenth of a transition's cost.
local function text(number)
  return string.format('%d', number)
end

-- The clock in milliseconds, as a number.
local function now_ms()
  if batch_now then
    return batch_now
  end
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- The clock in milliseconds, as the text every field and event stores.
local function now_text()
  if batch_now_text then
    return batch_now_text
  end
  return text(now_ms())
end

-- Runs `command key [group] a [b]` at once, or gathers `a [b]` to run with
-- the rest of the batch's. `group` is the consumer group of an XACK.
local function write_set(command, key, group, a, b)
  if not deferred then
    if group then
      redis.call(command, key, group, a)
    elseif b then
      redis.call(command, key, a, b)
    else
      redis.call(command, key, a)
    end
    return
  end
  local by_key = deferred.by_command[command]
  if not by_key then
    by_key = {}
    deferred.by_command[command] = by_key
  end
  local entry = by_key[key]
  if not entry then
    entry = { command = command, key = key, group = group, values = {} }
    by_key[key] = entry
    deferred.order[#deferred.order + 1] = entry
  end
  local values = entry.values
  values[#values + 1] = a
  if b then
    values[#values + 1] = b
  end
end

-- Runs what a batch gathered, in the order first asked, in chunks small
-- enough for Lua's stack.
local function flush_deferred()
  for _, entry in ipairs(deferred.order) do
    local chunk = 1000
    for first = 1, #entry.values, chunk do
      local last = math.min(first + chunk - 1, #entry.values)
      if entry.group then
        redis.call(entry.command, entry.key, entry.group, unpack(entry.values, first, last))
      else
        redis.call(entry.command, entry.key, unpack(entry.values, first, last))
      end
    end
  end
end

local function fail_with(code, message)
  return redis.error_reply(code .. ' ' .. message)
end

-- Appends an event with the given field-value pairs to the log; returns its
-- id, for the task's `log` field. The pairs are passed on as varargs: a
-- table per event and its unpack were measurable in a batch.
local function append_event(keys, task_id, event_type, at, ...)
  return redis.call('XADD', keys[2], '*', 'v', EVENT_FORMAT_VERSION, 'type', event_type, 'task', task_id, 'at', at, ...)
end

-- The task's `log` field with `id` added.
local function logged(log, id)
  if log and log ~= '' then
    return log .. ' ' .. id
  end
  return id
end

-- Stream ids compare as (milliseconds, sequence) pairs, not as text.
local function id_parts(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end

-- Trims `jobs` up to the oldest entry still needed: the oldest pending one
-- or, with none pending, the first after the group's last delivered one.
-- Every entry before that was delivered (a group delivers in stream order)
-- and is no longer pending, so acknowledged: no worker needs it. One trim
-- per call replaces an XDEL per work item, which seeks its entry through
-- the stream node and cost a fifth of a completion.
local function trim_jobs(jobs_key)
  local pending = redis.pcall('XPENDING', jobs_key, GROUP)
  if pending.err then
    return -- no group yet: nothing was delivered, so nothing can go
  end
  local keep
  if pending[1] > 0 then
    keep = pending[2]
  else
    local groups = redis.call('XINFO', 'GROUPS', jobs_key)
    for _, group in ipairs(groups) do
      local fields = {}
      for index = 1, #group, 2 do
        fields[group[index]] = group[index + 1]
      end
      if fields['name'] == GROUP then
        local milliseconds, sequence = id_parts(fields['last-delivered-id'])
        keep = text(milliseconds) .. '-' .. text(sequence + 1)
      end
    end
  end
  if keep then
    redis.call('XTRIM', jobs_key, 'MINID', keep)
  end
end

-- Acknowledges a work item, if there is one. `jobs` is trimmed at the end
-- of the call (trim_jobs). An item that may not have been delivered yet (a
-- canceled queued task's) is also deleted at once: trimming keeps every
-- undelivered entry, and no worker should be handed it.
local function drop_job(keys, job, undelivered)
  if job and job ~= '' then
    write_set('XACK', keys[3], GROUP, job)
    if undelivered then
      write_set('XDEL', keys[3], nil, job)
    end
    if deferred then
      deferred.trim_jobs = keys[3]
    else
      trim_jobs(keys[3])
    end
  end
end

-- Checks that `attempt` is the running attempt: the lease fence.
-- Returns the error reply to give, or nil and the fields a worker
-- transition needs: {status, attempt, job, log}.
local function check_lease(keys, task_id, attempt)
  local state = redis.call('HMGET', keys[1], 'status', 'attempt', 'job', 'log')
  local status, current = state[1], state[2]
  if not status then
    return fail_with('NOTFOUND', task_id)
  end
  if status == 'completed' or status == 'failed' or status == 'canceled' then
    return fail_with('ENDED', status), state
  end
  if status ~= 'running' or tonumber(current) ~= tonumber(attempt) then
    return fail_with('STALE', 'attempt ' .. attempt .. ' of task ' .. task_id .. ' is no longer current (task is '
      .. status .. ' at attempt ' .. tostring(current or 0) .. ')')
  end
  return nil, state
end

-- Whether a refused end is this very call run again: the task ended as
-- `status` at `attempt`, and only that attempt's holder can end it so.
-- fred sends a command once more when its connection dropped before the
-- answer, and Redis may have run it; the holder must then hear that its
-- end stands (and tidy up after it), not that the task ended elsewhere.
local function ended_by(state, status, attempt)
  return state ~= nil and state[1] == status and tonumber(state[2]) == tonumber(attempt)
end

-- ARGV: task_id, request, title, idempotency_ttl_ms
-- `request` is source, link, user, storage and dir as one field, encoded by
-- the Rust store (`request_field`), since they never change and are always
-- read together: the hash, the `created` event and the work item each hold
-- it as it is, and one argument and one field cost Redis less than five
-- everywhere they are passed, written or searched.
-- Returns {task_id, 1} when created, {existing_task_id, 0} for a repeated idempotency key
-- with the same `request`, and REUSED <existing_task_id> for one with another.
local function create(keys, args)
  local task_id = args[1]
  if keys[7] then
    local existing = redis.call('GET', keys[7])
    -- The key outlives a task that ended more than `retention_hours` ago
    -- (the key keeps 24 hours, retention may be 1): a repeat then creates
    -- the task again rather than answer with an id that is gone. The
    -- first task's hash shares this one's prefix (and hash tag).
    if existing then
      local first = string.sub(keys[1], 1, #keys[1] - #task_id) .. existing
      local first_request = redis.call('HGET', first, 'request')
      if first_request or redis.call('EXISTS', first) == 1 then
        -- A repeat must be the same request: a key reused for another
        -- link (a client's bug, or a script's reused key) would otherwise
        -- be answered with a task that is not the one asked for.
        if first_request and first_request ~= args[2] then
          return fail_with('REUSED', existing)
        end
        return { existing, 0 }
      end
    end
  end
  if redis.call('EXISTS', keys[1]) == 1 then
    return fail_with('EXISTS', task_id)
  end
  local at = now_text()
  local event = append_event(keys, task_id, 'created', at, 'request', args[2], 'title', args[3])
  -- The first work item carries the task's fields that never change, so
  -- the start of the first attempt needs no read of the task hash (see
  -- `Carried` in shared/src/store/queue.rs): `carried` is created, request
  -- and title, each ended by a newline but the title (the request is JSON,
  -- whose strings hold no raw newline). One field costs Redis less than
  -- three, here and in every read of the item. Later items (a retry's, a
  -- promotion's) carry the task id alone: their task has had an attempt.
  local job = redis.call('XADD', keys[3], '*', 'task', task_id, 'carried', at .. '\n' .. args[2] .. '\n' .. args[3])
  -- `attempt`, `retries`, `error` and `updated` are absent until they are
  -- not 0 / empty / later than every other timestamp, which keeps a queued
  -- task small.
  redis.call('HSET', keys[1], 'status', 'queued', 'created', at, 'job', job, 'log', event, 'request', args[2],
    'title', args[3])
  write_set('ZADD', keys[4], nil, at, task_id)
  if keys[7] then
    redis.call('SET', keys[7], task_id, 'PX', args[4])
  end
  return { task_id, 1 }
end

-- ARGV: task_id, job_id, worker
-- Starts the next attempt of a queued task, or takes over a running one
-- whose lease expired (its work item was reclaimed). Returns {attempt, at}:
-- the caller reads the task hash with a plain HGETALL pipelined right
-- behind this call, which Redis answers without converting every field to
-- Lua and back.
local function start(keys, args)
  local task_id, job, worker = args[1], args[2], args[3]
  local state = redis.call('HMGET', keys[1], 'status', 'attempt', 'job', 'log')
  local status, current_job = state[1], state[3]
  if not status then
    return fail_with('NOTFOUND', task_id)
  end
  if status ~= 'queued' and status ~= 'running' then
    return fail_with('ENDED', status)
  end
  if current_job ~= job then
    return fail_with('STALE', 'work item ' .. job .. ' is not the current one of task ' .. task_id)
  end
  local attempt = tonumber(state[2] or 0) + 1
  local attempt_text = text(attempt)
  local at = now_text()
  local event = append_event(keys, task_id, 'started', at, 'attempt', attempt_text, 'worker', worker)
  redis.call('HSET', keys[1], 'status', 'running', 'attempt', attempt_text, 'worker', worker, 'started', at,
    'log', logged(state[4], event))
  -- The error of the retry or release before this attempt is not this
  -- attempt's: a running task shows none. Only a task that has had an
  -- attempt can hold one, so a first start (most of them) neither reads
  -- nor deletes it: a field a hash lacks is searched end to end.
  if state[2] then
    redis.call('HDEL', keys[1], 'error')
  end
  write_set('ZREM', keys[4], nil, task_id)
  write_set('ZADD', keys[5], nil, at, task_id)
  return { attempt, at }
end

-- ARGV: task_id, attempt, file_name, size ('' when unknown), path, title,
--       validator ('' or absent when none)
-- `validator` identifies the file's version on its server (a direct link's
-- strong ETag or Last-Modified); a resume sends it as If-Range. Like the
-- other fields it is the latest resolved file's: a file without one
-- removes an earlier one, and neither the event nor the hash carries an
-- empty field.
local function resolve(keys, args)
  local task_id, attempt = args[1], args[2]
  local refused, state = check_lease(keys, task_id, attempt)
  if refused then
    return refused
  end
  local at = now_text()
  -- The validator's field-value pair, or nothing: unpacked last, an empty
  -- table adds no argument.
  local validator = {}
  if args[7] and args[7] ~= '' then
    validator = { 'validator', args[7] }
  end
  local event = append_event(keys, task_id, 'resolved', at,
    'attempt', attempt, 'file', args[3], 'size', args[4], 'path', args[5], 'title', args[6], unpack(validator))
  redis.call('HSET', keys[1], 'file', args[3], 'size', args[4], 'path', args[5], 'title', args[6], 'updated', at,
    'log', logged(state[4], event), unpack(validator))
  if #validator == 0 then
    redis.call('HDEL', keys[1], 'validator')
  end
  return 'OK'
end

-- ARGV: task_id, attempt, downloaded_bytes, total_bytes ('' when unknown), bytes_per_second
-- Progress is not an event; the answer tells a worker its lease is gone
-- (canceled, or taken over) even when it missed the pub/sub message.
local function progress(keys, args)
  local refused = check_lease(keys, args[1], args[2])
  if refused then
    return refused
  end
  redis.call('HSET', keys[1], 'done', args[3], 'total', args[4], 'bps', args[5])
  return 'OK'
end

-- Ends a task whose final fields the caller has written: out of the sorted
-- sets its `from_status` put it in, its work item acknowledged (and deleted
-- when it may be undelivered: the task was queued), and the retention
-- period set to expire it. The hash keeps the spent work item's id in
-- `job`: only a queued or running task's `job` is ever read.
local function finish(keys, task_id, from_status, job, retention_ms)
  if from_status == 'running' then
    write_set('ZREM', keys[5], nil, task_id)
  else
    write_set('ZREM', keys[4], nil, task_id)
    write_set('ZREM', keys[6], nil, task_id)
  end
  drop_job(keys, job, from_status ~= 'running')
  redis.call('PEXPIRE', keys[1], retention_ms)
end

-- ARGV: task_id, attempt, size ('' when unknown), path, retention_ms
local function complete(keys, args)
  local task_id, attempt = args[1], args[2]
  local refused, state = check_lease(keys, task_id, attempt)
  if refused then
    return ended_by(state, 'completed', attempt) and 'OK' or refused
  end
  local at = now_text()
  local event = append_event(keys, task_id, 'completed', at, 'attempt', attempt, 'size', args[3], 'path', args[4])
  -- An earlier attempt's error is cleared. (Writing it unread is cheaper
  -- than reading it to skip the write: a field a hash lacks is searched
  -- from end to end.)
  redis.call('HSET', keys[1], 'status', 'completed', 'size', args[3], 'path', args[4], 'error', '', 'ended', at,
    'log', logged(state[4], event))
  finish(keys, task_id, 'running', state[3], args[5])
  return 'OK'
end

-- `state` is what check_lease read.
local function fail_task(keys, task_id, attempt, error_text, retention_ms, state)
  local at = now_text()
  local event = append_event(keys, task_id, 'failed', at, 'attempt', attempt, 'error', error_text)
  redis.call('HSET', keys[1], 'status', 'failed', 'error', error_text, 'ended', at, 'log', logged(state[4], event))
  finish(keys, task_id, 'running', state[3], retention_ms)
  return 'failed'
end

-- ARGV: task_id, attempt, error, retention_ms
local function fail(keys, args)
  local refused, state = check_lease(keys, args[1], args[2])
  if refused then
    return ended_by(state, 'failed', args[2]) and 'failed' or refused
  end
  return fail_task(keys, args[1], args[2], args[3], args[4], state)
end

-- ARGV: task_id, attempt, error, counted (1: a failure that uses up a retry,
-- 0: a release on shutdown), max_retries, delay_ms, retention_ms
-- Returns 'retrying', or 'failed' when the retries are used up.
local function retry(keys, args)
  local task_id, attempt, error_text = args[1], args[2], args[3]
  local refused, state = check_lease(keys, task_id, attempt)
  if refused then
    -- A retry that found the retries used up failed the task.
    return ended_by(state, 'failed', attempt) and 'failed' or refused
  end
  local kept = redis.call('HMGET', keys[1], 'retries', 'created')
  local retries, created = tonumber(kept[1] or 0), kept[2]
  if args[4] == '1' then
    if retries >= tonumber(args[5]) then
      return fail_task(keys, task_id, attempt, error_text, args[7], state)
    end
    retries = retries + 1
  end
  local at = now_text()
  local due = tonumber(at) + tonumber(args[6])
  local event = append_event(keys, task_id, 'retrying', at,
    'attempt', attempt, 'error', error_text, 'retries', text(retries), 'due', text(due))
  drop_job(keys, state[3])
  local job = ''
  if due <= tonumber(at) then
    job = redis.call('XADD', keys[3], '*', 'task', task_id)
  else
    write_set('ZADD', keys[6], nil, text(due), task_id)
  end
  redis.call('HSET', keys[1], 'status', 'queued', 'error', error_text, 'retries', text(retries), 'updated', at,
    'job', job, 'log', logged(state[4], event))
  write_set('ZREM', keys[5], nil, task_id)
  write_set('ZADD', keys[4], nil, created, task_id)
  return 'retrying'
end

-- ARGV: task_id, retention_ms, cancel_channel
local function cancel(keys, args)
  local task_id = args[1]
  local state = redis.call('HMGET', keys[1], 'status', 'job', 'log')
  local status = state[1]
  if not status then
    return fail_with('NOTFOUND', task_id)
  end
  if status ~= 'queued' and status ~= 'running' then
    return fail_with('ENDED', status)
  end
  local at = now_text()
  local event = append_event(keys, task_id, 'canceled', at)
  redis.call('HSET', keys[1], 'status', 'canceled', 'ended', at, 'log', logged(state[3], event))
  finish(keys, task_id, status, state[2], args[2])
  redis.call('PUBLISH', args[3], task_id)
  return status
end

-- KEYS: jobs, delayed. ARGV: task hash prefix, limit
-- Moves tasks whose retry backoff is over from `delayed` onto `jobs`.
local function promote(keys, args)
  local due = redis.call('ZRANGE', keys[2], '-inf', now_ms(), 'BYSCORE', 'LIMIT', 0, tonumber(args[2]))
  for _, task_id in ipairs(due) do
    local task_key = args[1] .. task_id
    redis.call('ZREM', keys[2], task_id)
    local state = redis.call('HMGET', task_key, 'status', 'job')
    if state[1] == 'queued' and (not state[2] or state[2] == '') then
      redis.call('HSET', task_key, 'job', redis.call('XADD', keys[1], '*', 'task', task_id))
    end
  end
  return #due
end

-- KEYS: jobs. ARGV: consumer, job ids...
-- Renews the lease of each work item the consumer still owns (XCLAIM with
-- min-idle 0 resets its idle time) and returns the ids it no longer owns:
-- a plain XCLAIM would pull an item that another worker took over back to
-- this one.
local function heartbeat(keys, args)
  local consumer = args[1]
  local owned, lost = {}, {}
  for index = 2, #args do
    local pending = redis.call('XPENDING', keys[1], GROUP, args[index], args[index], 1)
    if pending[1] and pending[1][2] == consumer then
      owned[#owned + 1] = args[index]
    else
      lost[#lost + 1] = args[index]
    end
  end
  if #owned > 0 then
    redis.call('XCLAIM', keys[1], GROUP, consumer, 0, unpack(owned), 'JUSTID')
  end
  return lost
end

-- Batches: one call that applies a per-task function to many tasks, so a
-- busy queue pays one round trip, one script invocation, one clock read and
-- one write per shared set per batch rather than per task. KEYS: events,
-- jobs, queued, running, delayed, then each task's hash, followed by the
-- task's own extra key when `extra_key(task_args)` says it has one (a
-- create's idempotency key). ARGV: `width` arguments per task, as the
-- per-task function takes them. Each task's result is its own: a refusal
-- becomes the string 'ERR <code> <details>' in its slot, so one refused
-- task does not fail the batch. In an `isolated` batch a Redis error
-- raised inside one task (a key of the wrong type) becomes its slot's
-- 'ERR' too: a create batch carries many clients' creates, and one
-- client's failure must not answer the others' as failed while their
-- tasks stand created (what ran before an error stays written, as after a
-- failed single call). Worker batches are one worker's own, which treats
-- a failed call as failed for all, so they skip the `pcall` it costs
-- (1.5k instructions a task).
local function batch_of(per_task, width, extra_key, isolated)
  local function run_all(keys, args, results)
    -- One keys table and one args table serve every task in turn: a
    -- per-task function reads them only while it runs.
    local task_keys = { nil, keys[1], keys[2], keys[3], keys[4], keys[5] }
    local task_args = {}
    local next_key, index = 6, 0
    while next_key <= #keys do
      task_keys[1] = keys[next_key]
      next_key = next_key + 1
      for position = 1, width do
        task_args[position] = args[index * width + position]
      end
      if extra_key and extra_key(task_args) then
        task_keys[7] = keys[next_key]
        next_key = next_key + 1
      else
        task_keys[7] = nil
      end
      local ran, result
      if isolated then
        ran, result = pcall(per_task, task_keys, task_args)
      else
        ran, result = true, per_task(task_keys, task_args)
      end
      if not ran then
        result = 'ERR ' .. (type(result) == 'table' and result.err or tostring(result))
      elseif type(result) == 'table' and result.err then
        result = 'ERR ' .. result.err
      end
      index = index + 1
      results[index] = result
    end
    flush_deferred()
    if deferred.trim_jobs then
      trim_jobs(deferred.trim_jobs)
    end
  end
  return function(keys, args)
    batch_now = now_ms()
    batch_now_text = text(batch_now)
    deferred = { by_command = {}, order = {} }
    local results = {}
    local ok, failure = pcall(run_all, keys, args, results)
    if not ok then
      -- What the tasks before the error wrote stands (Redis keeps a
      -- function's writes up to its error), so their set writes and acks
      -- must stand too, or a completed task would stay in `running` and
      -- its item pending. Each is idempotent, so running them again after
      -- an error inside the flush itself is harmless.
      pcall(flush_deferred)
    end
    -- Leave no batch state behind for the next call, even when a Redis
    -- error inside one task fails the call, as Redis would fail it.
    batch_now, batch_now_text, deferred = nil, nil, nil
    if not ok then
      error(failure)
    end
    return results
  end
end

-- In a batch, a create has an idempotency key exactly when it gives the
-- key's time to live.
local function has_idempotency_key(args)
  return args[4] ~= ''
end

register('savestream_create', create)
register('savestream_start', start)
register('savestream_resolve', resolve)
register('savestream_progress', progress)
register('savestream_complete', complete)
register('savestream_fail', fail)
register('savestream_retry', retry)
register('savestream_cancel', cancel)
register('savestream_promote', promote)
register('savestream_heartbeat', heartbeat)
register('savestream_create_batch', batch_of(create, 4, has_idempotency_key, true))
register('savestream_start_batch', batch_of(start, 3))
register('savestream_complete_batch', batch_of(complete, 5))

--[[
Webhook deliveries (shared/src/store/webhooks.rs calls these).

A delivery is a hash `webhook:<webhook-id>` (task, event, body, status,
attempts, deadline, claimed_by, last_status, last_error) plus a member of the
`webhooks:due` sorted set, scored by when it may be tried next. Statuses:
pending (never tried), retrying, delivered, gave_up, gone (the receiver
answered 410). The last three are final: the delivery leaves the due set and
expires after the retention period.

A try is claimed the way a work item is leased: the claim bumps `attempts`
(the fence) and pushes the due time forward by the lease, so exactly one live
dispatcher sends it, and a crashed dispatcher's claim becomes due again once
the lease is over. A result is recorded only with the attempt and consumer
that claimed it.
]]

local function webhook_is_final(status)
  return status == 'delivered' or status == 'gave_up' or status == 'gone'
end

-- KEYS: 1 events, 2 delivery hash, 3 webhooks due, 4 task hash
-- ARGV: 1 group, 2 event id, 3 webhook id, 4 task id, 5 body, 6 span_ms
-- Records the delivery unless it exists (the event was read again after a
-- crash), then acknowledges the event. Returns 1 when recorded, 0 when not.
local function webhook_enqueue(keys, args)
  local recorded = 0
  if redis.call('EXISTS', keys[2]) == 0 then
    local at = now_ms()
    redis.call('HSET', keys[2], 'task', args[4], 'event', args[2], 'body', args[5], 'status', 'pending',
      'attempts', 0, 'created', at, 'updated', at, 'deadline', at + tonumber(args[6]), 'claimed_by', '',
      'last_status', '', 'last_error', '')
    redis.call('ZADD', keys[3], at, args[3])
    -- A task past retention has no hash; writing one would create a husk.
    if redis.call('EXISTS', keys[4]) == 1 then
      redis.call('HSET', keys[4], 'webhook_id', args[3], 'webhook_state', 'pending', 'webhook_attempts', 0,
        'webhook_last_status', '')
    end
    recorded = 1
  end
  redis.call('XACK', keys[1], args[1], args[2])
  return recorded
end

-- KEYS: 1 webhooks due. ARGV: 1 delivery hash prefix, 2 limit, 3 lease_ms, 4 consumer
-- Claims up to `limit` due deliveries. Returns {{webhook_id, attempt, task_id, body}, ...};
-- attempt 0 marks a member whose key is not a hash, dropped (the error in place of the body).
-- attempt -1 marks a record whose attempts are not a number, dropped (why in place of the body).
local function webhook_claim(keys, args)
  local at = now_ms()
  local due = redis.call('ZRANGE', keys[1], '-inf', at, 'BYSCORE', 'LIMIT', 0, tonumber(args[2]))
  local claimed = {}
  for _, webhook_id in ipairs(due) do
    local key = args[1] .. webhook_id
    -- A key of another type (WRONGTYPE) costs its own member only: removed
    -- from the due set and answered with attempt 0 and the error, the key
    -- left alone. Raised, the error would fail the whole claim after the
    -- deliveries before it were claimed, on every claim until it is fixed.
    local state = redis.pcall('HMGET', key, 'status', 'attempts', 'task', 'body')
    if state.err then
      redis.call('ZREM', keys[1], webhook_id)
      table.insert(claimed, { webhook_id, 0, '', state.err })
    elseif not state[1] or webhook_is_final(state[1]) then
      redis.call('ZREM', keys[1], webhook_id)
    elseif not tonumber(state[2]) then
      -- A record with a status but no number of attempts cannot be tried
      -- (nor its try recorded): removed from the due set and answered with
      -- attempt -1 and why, for the caller to give it up. Raised, the error
      -- would fail the claim on every call, this member being the earliest.
      redis.call('ZREM', keys[1], webhook_id)
      table.insert(claimed, { webhook_id, -1, state[3] or '', 'its attempts are not a number: '
        .. tostring(state[2] or 'none') })
    else
      local attempt = tonumber(state[2]) + 1
      redis.call('HSET', key, 'attempts', attempt, 'claimed_by', args[4], 'updated', at)
      redis.call('ZADD', keys[1], at + tonumber(args[3]), webhook_id)
      table.insert(claimed, { webhook_id, attempt, state[3], state[4] })
    end
  end
  return claimed
end

-- KEYS: 1 delivery hash, 2 webhooks due, 3 task hash (the delivery hash again when the record names no task)
-- ARGV: 1 webhook id, 2 why, 3 retention_ms
-- Gives up a delivery whose record cannot be read: gave_up with why as its
-- last error, out of the due set, expiring after retention like any final
-- delivery; the task's webhook summary says gave_up when it is this
-- delivery's (a record naming another task's hash leaves that one alone).
local function webhook_give_up(keys, args)
  redis.call('HSET', keys[1], 'status', 'gave_up', 'claimed_by', '', 'last_error', args[2])
  redis.call('ZREM', keys[2], args[1])
  redis.call('PEXPIRE', keys[1], args[3])
  if keys[3] ~= keys[1] then
    local owner = redis.pcall('HGET', keys[3], 'webhook_id')
    if owner == args[1] then
      redis.call('HSET', keys[3], 'webhook_state', 'gave_up')
    end
  end
  return 1
end

-- KEYS: 1 delivery hash, 2 webhooks due, 3 task hash
-- ARGV: 1 webhook id, 2 attempt, 3 consumer, 4 result (delivered | retry | gave_up | gone),
--       5 http status ('' when none), 6 error ('' when none), 7 retry delay_ms, 8 retention_ms
-- Records the result of a claimed try. A retry is due after the delay, but
-- never after the delivery's deadline; one asked for at or past the deadline
-- gives up instead. Returns the status recorded.
local function webhook_record(keys, args)
  local webhook_id, attempt, consumer = args[1], args[2], args[3]
  local state = redis.call('HMGET', keys[1], 'status', 'attempts', 'claimed_by', 'deadline')
  if not state[1] then
    return fail_with('NOTFOUND', webhook_id)
  end
  if webhook_is_final(state[1]) or tonumber(state[2]) ~= tonumber(attempt) or state[3] ~= consumer then
    return fail_with('STALE', 'attempt ' .. attempt .. ' of webhook ' .. webhook_id .. ' is no longer claimed by '
      .. consumer)
  end
  local at = now_ms()
  local status = args[4]
  local due = at
  if status == 'retry' then
    local deadline = tonumber(state[4])
    due = at + tonumber(args[7])
    if at >= deadline then
      status = 'gave_up'
    else
      status = 'retrying'
      if due > deadline then
        due = deadline
      end
    end
  end
  redis.call('HSET', keys[1], 'status', status, 'claimed_by', '', 'last_status', args[5], 'last_error', args[6],
    'updated', at)
  if status == 'retrying' then
    redis.call('ZADD', keys[2], due, webhook_id)
  else
    redis.call('ZREM', keys[2], webhook_id)
    redis.call('PEXPIRE', keys[1], args[8])
  end
  if redis.call('EXISTS', keys[3]) == 1 then
    local task_state = status
    if status == 'gone' then
      task_state = 'gave_up'
    end
    redis.call('HSET', keys[3], 'webhook_state', task_state, 'webhook_attempts', attempt,
      'webhook_last_status', args[5])
  end
  return status
end

register('savestream_webhook_enqueue', webhook_enqueue)
register('savestream_webhook_claim', webhook_claim)
register('savestream_webhook_record', webhook_record)
register('savestream_webhook_give_up', webhook_give_up)
