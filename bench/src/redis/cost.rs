//! The cost-model phase of `virtuos-bench redis` (the shared implementation is
//! [`crate::cost`]): per mode one more fresh stack, redis-server in one cgroup and
//! virtuos-net in another, the RESP check, a warm-up, then one redis-benchmark run per test ×
//! pipeline depth between two `virtuos-redirect top --once --json` readings: system calls per
//! request of redis-server and of the network server, their largest system calls, CPU µs per
//! request, calls routed to the network domain per request.

use anyhow::Result;
use serde::Serialize;

use super::{check_stack, start_stack, Ctx, Stack};
use crate::cost::{self, opt, CostCell, CostModelSetting, CostStack, Group, Labels, Load};
use crate::nginx::modes::Mode;

/// redis's names in the cost model.
pub const LABELS: Labels = Labels {
    app: "redis-server",
    app_group: "redis-server",
    load: "redis-benchmark",
};

/// redis's cost model (`cost_model` in `--json`).
pub type CostModel = cost::CostModel<RedisCell>;

/// One test × pipeline depth (`test` and `pipeline` of its row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedisCell {
    /// `SET` or `GET`.
    pub test: String,
    /// Pipeline depth.
    pub pipeline: u64,
}

impl CostCell for RedisCell {
    fn label(&self) -> String {
        format!("{} pipeline {}", self.test, self.pipeline)
    }

    fn padded(&self) -> String {
        format!("{:<3} pipeline {:<3}", self.test, self.pipeline)
    }
}

impl CostStack for Stack<'_> {
    type Cell = RedisCell;

    fn pids(&self, group: Group) -> Vec<u32> {
        match group {
            Group::App => self.redis.pids(),
            _ => crate::cost::server_pids(&self.servers, group, LABELS.app),
        }
    }

    fn cpu_s(&self, group: Group) -> f64 {
        match group {
            Group::App => self.redis.cpu_s(),
            _ => crate::cost::server_cpu_s(&self.servers, group, LABELS.app),
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        Stack::check_alive(self)
    }

    fn prepare(&mut self, _cells: &[RedisCell]) -> Result<()> {
        check_stack(self)?;
        self.warm_up();
        Ok(())
    }

    fn load(&mut self, cell: &RedisCell) -> Result<Load> {
        let run = self.bench_run(&cell.test.to_ascii_lowercase(), cell.pipeline);
        let results = run.run()?;
        let r = results
            .iter()
            .find(|r| r.test.eq_ignore_ascii_case(&cell.test))
            .map_or(0.0, |r| r.requests_per_s);
        Ok(Load {
            requests: if r > 0.0 { run.requests } else { 0 },
            requests_per_s: r,
            failure: (r <= 0.0).then(|| "no request completed".to_owned()),
        })
    }

    fn stop(self) {
        let _ = self.redis.stop();
        drop(self.servers);
    }
}

/// Runs the cost-model phase over the modes that ran, every test × pipeline depth
/// (`first_index` numbers its stacks' directories after the throughput stacks).
pub(super) fn run(
    ctx: &Ctx,
    modes: &[Mode],
    setting: CostModelSetting,
    first_index: usize,
) -> CostModel {
    let cells: Vec<RedisCell> = ctx
        .cfg
        .pipelines
        .iter()
        .flat_map(|&p| {
            ctx.cfg.tests.iter().map(move |t| RedisCell {
                test: t.to_uppercase(),
                pipeline: p,
            })
        })
        .collect();
    cost::run(
        setting,
        &LABELS,
        modes,
        &cells,
        first_index,
        |mode, index| start_stack(ctx, mode, index),
    )
}

/// The cost model's table, each cell's modes together (native beside net), or the line saying
/// why it did not run.
pub fn print_table(cm: &CostModel) {
    if !cost::print_title(cm) {
        return;
    }
    println!(
        "{:<4} {:>8} {:<8} {:>11} {:>12} {:>12} {:>9} {:>12} {:>21}",
        "test",
        "pipeline",
        "mode",
        "req/s tel.",
        "redis sc/r",
        "net srv sc/r",
        "all sc/r",
        "routed/r net",
        "CPU us/r redis / net"
    );
    let net = Group::Net.process(LABELS.app);
    let mut cells: Vec<&RedisCell> = Vec::new();
    for r in &cm.rows {
        if !cells.contains(&&r.cell) {
            cells.push(&r.cell);
        }
    }
    for c in cells {
        for r in cm.rows.iter().filter(|r| &r.cell == c) {
            let sc = |g: Group| opt(r.process(g).and_then(|p| p.syscalls_per_request), 2);
            let cpu = |g: Group| opt(r.process(g).and_then(|p| p.cpu_us_per_request), 2);
            println!(
                "{:<4} {:>8} {:<8} {:>11} {:>12} {:>12} {:>9} {:>12} {:>21}",
                c.test,
                c.pipeline,
                r.mode,
                opt(r.requests_per_s_telemetry_on, 0),
                sc(Group::App),
                sc(Group::Net),
                opt(r.all_syscalls_per_request, 2),
                opt(r.routed_to(net).and_then(|x| x.per_request), 2),
                format!("{} / {}", cpu(Group::App), cpu(Group::Net)),
            );
        }
    }
    println!("(sc/r: system calls (kernel entries) per request; routed/r net: calls routed to the network domain per request, which never enter the kernel; CPU us/r: CPU µs per request of redis-server and of the network server)");
    cost::print_top_syscalls(cm);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_label_and_serialise() {
        let c = RedisCell {
            test: "SET".to_owned(),
            pipeline: 16,
        };
        assert_eq!(c.label(), "SET pipeline 16");
        assert_eq!(c.padded(), "SET pipeline 16 ");
        let mut cm = CostModel::new(CostModelSetting::On, &LABELS);
        cm.status = "ran";
        cm.rows
            .push(cost::CostRow::failed("net", &c, "boom".to_owned()));
        assert!(cm.failure().unwrap().contains("net SET pipeline 16: boom"));
        let v = serde_json::to_value(&cm).unwrap();
        assert_eq!(v["rows"][0]["test"], "SET");
        assert_eq!(v["rows"][0]["pipeline"], 16);
        assert!(v["method"][0]
            .as_str()
            .unwrap()
            .contains("one redis-benchmark run"));
    }
}
