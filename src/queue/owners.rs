//! Video-id owners shared by every consumer of the queue: a Redis hash `<stream>:owners`
//! from video id to the input that produces it. Each consumer also keeps its own map (from its
//! ledger); this one is what makes two consumers agree, so `proposals/` and `merge` never hold
//! two inputs' results under one id.

use super::{path_arg, Redis};
use crate::service::job::SharedOwners;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Sets the owner only if there is none, and answers the owner now, in one round trip.
const HOLD: &str = r"
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], ARGV[1])";

/// Compare-and-set: the owner changes only if it is still the one the caller saw.
const REPLACE: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0";

/// Compare-and-delete: an id is freed only by its owner.
const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0";

/// The owners hash of one stream, over a connection of its own (jobs on worker threads ask
/// it while the consumer's loop uses its own connection).
pub struct RedisOwners {
    redis: Mutex<Redis>,
    key: String,
}

impl RedisOwners {
    /// The owners of `stream`'s videos.
    pub fn new(redis: Redis, stream: &str) -> RedisOwners {
        RedisOwners {
            redis: Mutex::new(redis),
            key: format!("{stream}:owners"),
        }
    }

    fn run<T: redis::FromRedisValue>(&self, script: &str, args: &[&[u8]]) -> Result<T, String> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(1).arg(&self.key);
        for arg in args {
            cmd.arg(*arg);
        }
        self.redis
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .query(&cmd)
            .map_err(|e| e.to_string())
    }
}

/// The name every consumer gives an input: symlinks and `..` resolved where it exists, so two
/// spellings of one file are one owner.
fn owner_name(input: &Path) -> PathBuf {
    input.canonicalize().unwrap_or_else(|_| input.to_path_buf())
}

impl SharedOwners for RedisOwners {
    fn hold(&self, vid: &str, input: &Path) -> Result<PathBuf, String> {
        let bytes: Vec<u8> = self.run(HOLD, &[vid.as_bytes(), path_arg(&owner_name(input))])?;
        use std::os::unix::ffi::OsStringExt;
        let owner = PathBuf::from(std::ffi::OsString::from_vec(bytes));
        // Answered in the caller's spelling when it is the caller.
        Ok(if owner == owner_name(input) {
            input.to_path_buf()
        } else {
            owner
        })
    }

    fn replace(&self, vid: &str, gone: &Path, input: &Path) -> Result<bool, String> {
        let replaced: i64 = self.run(
            REPLACE,
            &[vid.as_bytes(), path_arg(gone), path_arg(&owner_name(input))],
        )?;
        Ok(replaced == 1)
    }

    fn release(&self, vid: &str, input: &Path) -> Result<(), String> {
        self.run::<i64>(RELEASE, &[vid.as_bytes(), path_arg(&owner_name(input))])
            .map(|_| ())
    }
}
