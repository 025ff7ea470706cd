// Chinese (zh-CN) and English. zh-CN when the browser prefers Chinese; the choice is remembered.
const TEXT = {
  en: {
    "lang.switch": "中文", "logout": "Sign out", "login.title": "Sign in to Shanzhi", "login.user": "User name",
    "login.password": "Password", "login.otp": "Authenticator code", "login.submit": "Sign in", "login.or": "or", "login.sso": "Sign in with",
    "login.ssoLost": "This single sign-on was started in another tab or has expired: start again.",
    "login.otpNeeded": "This account has a second factor: enter the 6-digit code from your authenticator app.",
    "login.restricted": "This account must enrol a second factor before anything else: run 'shanzhi mfa enroll'.",
    "nav.overview": "Overview", "nav.plans": "Plans", "plan.kind": "Plan", "plan.rebalance": "Rebalance every cloud",
    "plan.evacuate": "Evacuate a cloud", "plan.cloud": "Cloud (to evacuate)", "plan.propose": "Propose (nothing moves yet)",
    "plan.plan": "Plan", "plan.from": "From", "plan.to": "To", "plan.apply": "Apply", "plan.drop": "Drop", "nav.clouds": "Clouds", "nav.events": "Events", "nav.alarms": "Alarms",
    "nav.vdcs": "VDCs", "nav.apps": "Apps", "nav.deploy": "Deploy", "nav.approvals": "Approvals", "nav.bill": "Bill",
    "nav.users": "Users", "nav.grants": "Grants", "nav.tokens": "Tokens", "nav.audit": "Audit trail", "nav.ledger": "Ledger",
    "overview.title": "The government cloud at a glance", "overview.topology": "Sites and clouds",
    "overview.capacity": "Capacity and use per cloud", "clouds": "Clouds", "healthy": "Healthy clouds", "sites": "Sites", "instances": "Instances",
    "col.name": "Name", "col.kind": "Kind", "col.site": "Site", "col.health": "Health", "col.cpu": "CPU (cores)",
    "col.memory": "Memory", "col.instances": "Instances", "col.vdc": "VDC", "col.status": "Status",
    "col.replicas": "Ready / desired", "col.cloud": "Cloud", "col.host": "Host", "col.state": "State",
    "col.why": "Why here", "col.reason": "Reason", "col.time": "Time", "col.object": "Object", "col.message": "Message",
    "col.quota": "Quota", "col.user": "User", "col.role": "Role", "col.locked": "Locked", "col.mfa": "Second factor",
    "col.actions": "Actions", "col.action": "Action", "col.result": "Result", "col.expires": "Expires", "col.id": "ID",
    "col.requested": "Requested by", "col.stage": "Stage", "col.severity": "Severity", "col.ack": "Acknowledged",
    "col.amount": "Amount", "col.endpoint": "Endpoint",
    "apps.title": "Business systems", "app.instances": "Replicas: where and why", "app.metrics": "CPU use (cores) per replica",
    "app.events": "Events", "app.logs": "Log", "app.scale": "Scale", "app.replicas": "Replicas of", "app.apply": "Apply",
    "app.noMetrics": "No samples yet: the first arrive within a sampling interval.",
    "deploy.title": "Deploy a business system", "deploy.form": "From a form", "deploy.json": "Or paste the App document (JSON)",
    "deploy.name": "App name", "deploy.vdc": "VDC", "deploy.component": "Component", "deploy.replicas": "Replicas",
    "deploy.cpu": "CPU (cores)", "deploy.memory": "Memory (e.g. 256Mi)", "deploy.image": "Image (VM or container clouds)",
    "deploy.command": "Command (process clouds), one argument per line", "deploy.port": "Port", "deploy.tags": "Only clouds tagged (key=value, comma-separated)",
    "deploy.submit": "Deploy", "deploy.done": "Applied", "deploy.held": "Held for approval",
    "vdcs.title": "Virtual data centres and quotas", "approvals.title": "Approvals",
    "approve": "Approve", "reject": "Reject", "bill.title": "Bill", "events.title": "Events",
    "alarms.title": "Alarms", "ack": "Acknowledge", "alarm.rules": "Alarm rules", "alarm.silences": "Silences in force", "alarm.silence": "Silence 1 h",
    "alarm.firing": "firing", "alarm.resolved": "resolved", "alarm.silenced": "silenced", "alarm.when": "When",
    "alarm.for": "For", "alarm.rule": "Rule", "users.title": "Users", "lock": "Lock", "unlock": "Unlock",
    "grants.title": "Role grants", "tokens.title": "My tokens", "revoke": "Revoke",
    "audit.title": "Audit trail", "audit.verify": "Verify the chain", "audit.verified": "Verified",
    "ledger.title": "Directory ledger", "ledger.checkpoint": "Latest checkpoint", "ledger.entry": "Entry",
    "ledger.check": "Check inclusion in the browser", "ledger.included": "Included: the proof leads to the signed root",
    "ledger.notIncluded": "NOT included: the proof does not lead to the signed root",
    "ledger.signature": "Checkpoint signature checked against the pinned log key",
    "none": "Nothing here.", "pages": "Pages", "previous": "Previous", "next": "Next", "loading": "Loading…", "forbidden": "You may not see this.", "yes": "yes", "no": "no",
  },
  "zh-CN": {
    "lang.switch": "English", "logout": "退出", "login.title": "登录善治", "login.user": "用户名", "login.password": "密码",
    "login.otp": "动态验证码", "login.submit": "登录", "login.or": "或", "login.sso": "统一身份认证登录：",
    "login.ssoLost": "该统一身份认证登录已过期或在其他标签页发起，请重新开始。",
    "login.otpNeeded": "该账号已启用双因素认证：请输入身份验证器中的6位验证码。",
    "login.restricted": "该账号须先绑定第二因素：请运行 'shanzhi mfa enroll'。",
    "nav.overview": "总览", "nav.plans": "调度计划", "plan.kind": "计划", "plan.rebalance": "全局再平衡",
    "plan.evacuate": "腾空一个云", "plan.cloud": "云（腾空时）", "plan.propose": "生成计划（暂不迁移）", "plan.plan": "计划",
    "plan.from": "源", "plan.to": "目标", "plan.apply": "执行", "plan.drop": "放弃", "nav.clouds": "云资源池", "nav.events": "事件", "nav.alarms": "告警", "nav.vdcs": "虚拟数据中心",
    "nav.apps": "业务系统", "nav.deploy": "部署", "nav.approvals": "审批", "nav.bill": "账单", "nav.users": "用户",
    "nav.grants": "授权", "nav.tokens": "令牌", "nav.audit": "审计日志", "nav.ledger": "目录账本",
    "overview.title": "政务云全景", "overview.topology": "站点与云", "overview.capacity": "各云容量与使用",
    "clouds": "云", "healthy": "健康的云", "sites": "站点", "instances": "实例", "col.name": "名称", "col.kind": "类型", "col.site": "站点",
    "col.health": "健康", "col.cpu": "CPU（核）", "col.memory": "内存", "col.instances": "实例数", "col.vdc": "VDC",
    "col.status": "状态", "col.replicas": "就绪 / 期望", "col.cloud": "云", "col.host": "主机", "col.state": "状态",
    "col.why": "放置原因", "col.reason": "原因", "col.time": "时间", "col.object": "对象", "col.message": "消息",
    "col.quota": "配额", "col.user": "用户", "col.role": "角色", "col.locked": "锁定", "col.mfa": "第二因素",
    "col.actions": "操作", "col.action": "动作", "col.result": "结果", "col.expires": "到期", "col.id": "编号",
    "col.requested": "申请人", "col.stage": "阶段", "col.severity": "级别", "col.ack": "已确认", "col.amount": "金额",
    "col.endpoint": "访问地址",
    "apps.title": "业务系统", "app.instances": "副本：位置与原因", "app.metrics": "各副本CPU使用（核）", "app.events": "事件", "app.logs": "日志",
    "app.scale": "扩缩容", "app.replicas": "副本数：", "app.apply": "应用", "app.noMetrics": "暂无采样：首个采样将在一个采样周期内到达。",
    "deploy.title": "部署业务系统", "deploy.form": "表单", "deploy.json": "或粘贴应用文档（JSON）", "deploy.name": "应用名称",
    "deploy.vdc": "VDC", "deploy.component": "组件", "deploy.replicas": "副本数", "deploy.cpu": "CPU（核）",
    "deploy.memory": "内存（如 256Mi）", "deploy.image": "镜像（虚拟机或容器云）", "deploy.command": "命令（进程云），每行一个参数",
    "deploy.port": "端口", "deploy.tags": "仅限带以下标签的云（key=value，逗号分隔）", "deploy.submit": "部署", "deploy.done": "已应用", "deploy.held": "等待审批",
    "vdcs.title": "虚拟数据中心与配额", "approvals.title": "审批", "approve": "批准", "reject": "驳回", "bill.title": "账单",
    "events.title": "事件", "alarms.title": "告警", "ack": "确认", "alarm.rules": "告警规则", "alarm.silences": "生效中的静默",
    "alarm.silence": "静默1小时", "alarm.firing": "告警中", "alarm.resolved": "已恢复", "alarm.silenced": "已静默",
    "alarm.when": "条件", "alarm.for": "持续", "alarm.rule": "规则", "users.title": "用户", "lock": "锁定", "unlock": "解锁",
    "grants.title": "角色授权", "tokens.title": "我的令牌", "revoke": "吊销", "audit.title": "审计日志",
    "audit.verify": "校验哈希链", "audit.verified": "校验通过", "ledger.title": "目录账本", "ledger.checkpoint": "最新检查点",
    "ledger.entry": "条目", "ledger.check": "在浏览器中校验包含证明", "ledger.included": "已包含：证明可推导至已签名的根",
    "ledger.notIncluded": "未包含：证明无法推导至已签名的根", "ledger.signature": "检查点签名已用固定的日志公钥校验",
    "none": "暂无数据。", "pages": "分页", "previous": "上一页", "next": "下一页", "loading": "加载中…", "forbidden": "无权查看。", "yes": "是", "no": "否",
  },
};

const KEY = "shanzhi.lang";
export let lang = localStorage.getItem(KEY)
  || ((navigator.languages || [navigator.language]).some((l) => l.toLowerCase().startsWith("zh")) ? "zh-CN" : "en");

export function t(key) {
  return TEXT[lang][key] ?? TEXT.en[key] ?? key;
}

export function toggle() {
  lang = lang === "en" ? "zh-CN" : "en";
  localStorage.setItem(KEY, lang);
}
