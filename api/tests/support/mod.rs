//! What the API's in-process tests share: the smallest config that serves
//! the API on a free port (`port = 0`) against a test's own Redis, with the
//! token `t`, one local storage and user 1.

use std::path::Path;

use savestream_shared::config::Config;

pub fn minimal_config(redis_url: &str, storage: &Path) -> Config {
    let text = format!(
        "[api]\nhost = \"127.0.0.1\"\nport = 0\ntoken = \"t\"\n[redis]\nurl = \"{redis_url}\"\n\
         [[storages]]\nname = \"local1\"\ntype = \"local\"\nbase_path = \"{}\"\n\
         [[users]]\nid = 1\nstorages = [\"local1\"]\n",
        storage.display()
    );
    Config::from_toml_str(&text, "config.toml", std::iter::empty())
        .expect("the test config loads")
        .config
}
