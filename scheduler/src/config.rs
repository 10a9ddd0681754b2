//! The `--config` file: a KubeSchedulerConfiguration-like YAML choosing the enabled
//! filter and score plugins, score weights, NodeResourcesFit's scoring strategy and
//! `percentageOfNodesToScore`, merged over kube-scheduler's defaults as Kubernetes merges
//! a profile's `plugins` (`disabled: [{name: "*"}]` drops the defaults).

use serde::Deserialize;

use crate::framework::{Framework, WeightedScore};
use crate::plugins::{self, node_resources_fit::Strategy, Args};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read { path: String, #[source] source: std::io::Error },
    #[error("parsing the scheduler configuration")]
    Parse(#[source] serde_yaml_ng::Error),
    #[error("unknown {point} plugin {name:?}")]
    UnknownPlugin { point: &'static str, name: String },
    #[error("unknown NodeResourcesFit scoringStrategy type {0:?} (LeastAllocated or MostAllocated)")]
    UnknownStrategy(String),
    #[error("percentageOfNodesToScore must be within 0..=100, got {0}")]
    Percentage(i64),
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    #[serde(default)]
    percentage_of_nodes_to_score: Option<i64>,
    #[serde(default)]
    profiles: Vec<ProfileFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileFile {
    scheduler_name: Option<String>,
    #[serde(default)]
    percentage_of_nodes_to_score: Option<i64>,
    #[serde(default)]
    plugins: PluginsFile,
    #[serde(default)]
    plugin_config: Vec<PluginConfigFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PluginsFile {
    #[serde(default)]
    multi_point: PluginSet,
    #[serde(default)]
    filter: PluginSet,
    #[serde(default)]
    score: PluginSet,
}

#[derive(Debug, Default, Deserialize)]
struct PluginSet {
    #[serde(default)]
    enabled: Vec<PluginRef>,
    #[serde(default)]
    disabled: Vec<PluginRef>,
}

#[derive(Debug, Deserialize)]
struct PluginRef {
    name: String,
    #[serde(default)]
    weight: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct PluginConfigFile {
    name: String,
    #[serde(default)]
    args: serde_json::Value,
}

/// One scheduling profile, checked.
#[derive(Debug, Clone)]
pub struct Profile {
    pub scheduler_name: String,
    pub filters: Vec<String>,
    pub scores: Vec<(String, i64)>,
    pub args: Args,
    pub percentage_of_nodes_to_score: u32,
}

impl Default for Profile {
    fn default() -> Profile {
        Profile {
            scheduler_name: "default-scheduler".into(),
            filters: plugins::DEFAULT_FILTERS.iter().map(|s| s.to_string()).collect(),
            scores: plugins::DEFAULT_SCORES.iter().map(|(s, w)| (s.to_string(), *w)).collect(),
            args: Args::default(),
            percentage_of_nodes_to_score: 0,
        }
    }
}

fn merge_filters(list: &mut Vec<String>, sets: &[&PluginSet]) -> Result<(), ConfigError> {
    for set in sets {
        if set.disabled.iter().any(|p| p.name == "*") {
            list.clear();
        }
        list.retain(|n| !set.disabled.iter().any(|d| &d.name == n));
        for e in &set.enabled {
            if plugins::filter(&e.name, &Args::default()).is_none() {
                continue;
            }
            if !list.contains(&e.name) {
                list.push(e.name.clone());
            }
        }
    }
    Ok(())
}

fn merge_scores(list: &mut Vec<(String, i64)>, sets: &[&PluginSet]) {
    for set in sets {
        if set.disabled.iter().any(|p| p.name == "*") {
            list.clear();
        }
        list.retain(|(n, _)| !set.disabled.iter().any(|d| &d.name == n));
        for e in &set.enabled {
            if plugins::score(&e.name, &Args::default()).is_none() {
                continue;
            }
            let default = plugins::DEFAULT_SCORES.iter().find(|(n, _)| *n == e.name).map_or(1, |(_, w)| *w);
            let weight = e.weight.filter(|w| *w > 0).unwrap_or(default);
            match list.iter_mut().find(|(n, _)| n == &e.name) {
                Some(entry) => entry.1 = weight,
                None => list.push((e.name.clone(), weight)),
            }
        }
    }
}

impl Profile {
    /// Reads a configuration file's first profile.
    pub fn from_file(path: &std::path::Path) -> Result<Profile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Profile::from_yaml(&text)
    }

    pub fn from_yaml(text: &str) -> Result<Profile, ConfigError> {
        let file: File = serde_yaml_ng::from_str(text).map_err(ConfigError::Parse)?;
        let mut profile = Profile::default();
        let p = file.profiles.into_iter().next().unwrap_or_default();
        if let Some(name) = p.scheduler_name {
            profile.scheduler_name = name;
        }
        // Every named plugin must exist at some extension point.
        for set in [&p.plugins.multi_point, &p.plugins.filter, &p.plugins.score] {
            for e in set.enabled.iter().chain(&set.disabled) {
                let known = e.name == "*" || plugins::filter(&e.name, &Args::default()).is_some() || plugins::score(&e.name, &Args::default()).is_some();
                if !known {
                    return Err(ConfigError::UnknownPlugin { point: "scheduler", name: e.name.clone() });
                }
            }
        }
        for e in &p.plugins.filter.enabled {
            if plugins::filter(&e.name, &Args::default()).is_none() {
                return Err(ConfigError::UnknownPlugin { point: "filter", name: e.name.clone() });
            }
        }
        for e in &p.plugins.score.enabled {
            if plugins::score(&e.name, &Args::default()).is_none() {
                return Err(ConfigError::UnknownPlugin { point: "score", name: e.name.clone() });
            }
        }
        merge_filters(&mut profile.filters, &[&p.plugins.multi_point, &p.plugins.filter])?;
        merge_scores(&mut profile.scores, &[&p.plugins.multi_point, &p.plugins.score]);
        for pc in &p.plugin_config {
            if pc.name == plugins::node_resources_fit::NAME {
                if let Some(t) = pc.args.pointer("/scoringStrategy/type").and_then(|v| v.as_str()) {
                    profile.args.fit_strategy = match t {
                        "LeastAllocated" => Strategy::LeastAllocated,
                        "MostAllocated" => Strategy::MostAllocated,
                        other => return Err(ConfigError::UnknownStrategy(other.to_string())),
                    };
                }
            }
        }
        let pct = p.percentage_of_nodes_to_score.or(file.percentage_of_nodes_to_score).unwrap_or(0);
        profile.percentage_of_nodes_to_score = u32::try_from(pct).ok().filter(|p| *p <= 100).ok_or(ConfigError::Percentage(pct))?;
        Ok(profile)
    }

    /// Builds the framework with this profile's plugins.
    pub fn framework(&self) -> Framework {
        let filters = self.filters.iter().filter_map(|n| plugins::filter(n, &self.args)).collect();
        let scores = self
            .scores
            .iter()
            .filter_map(|(n, w)| plugins::score(n, &self.args).map(|plugin| WeightedScore { plugin, weight: *w }))
            .collect();
        Framework::new(filters, scores, self.percentage_of_nodes_to_score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_a_file() {
        let p = Profile::from_yaml("{}").unwrap();
        assert_eq!(p.filters.len(), 8);
        assert!(p.scores.contains(&("TaintToleration".to_string(), 3)));
        assert_eq!(p.args.fit_strategy, Strategy::LeastAllocated);
    }

    #[test]
    fn plugins_and_weights_merge_over_the_defaults() {
        let yaml = r#"
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
percentageOfNodesToScore: 30
profiles:
- schedulerName: default-scheduler
  plugins:
    filter:
      disabled: [{name: NodePorts}]
    score:
      disabled: [{name: "*"}]
      enabled: [{name: NodeResourcesFit, weight: 5}, {name: ImageLocality}]
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy:
        type: MostAllocated
"#;
        let p = Profile::from_yaml(yaml).unwrap();
        assert!(!p.filters.iter().any(|f| f == "NodePorts"));
        assert_eq!(p.scores, vec![("NodeResourcesFit".to_string(), 5), ("ImageLocality".to_string(), 1)]);
        assert_eq!(p.args.fit_strategy, Strategy::MostAllocated);
        assert_eq!(p.percentage_of_nodes_to_score, 30);
        assert_eq!(p.framework().scores.len(), 2);
    }

    #[test]
    fn unknown_plugins_are_rejected() {
        let yaml = "profiles: [{plugins: {score: {enabled: [{name: NodeName}]}}}]";
        assert!(matches!(Profile::from_yaml(yaml), Err(ConfigError::UnknownPlugin { point: "score", .. })));
        let yaml = "profiles: [{plugins: {filter: {enabled: [{name: Nope}]}}}]";
        assert!(Profile::from_yaml(yaml).is_err());
    }
}
